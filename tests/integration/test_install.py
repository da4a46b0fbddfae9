#!/usr/bin/env python3
"""What a packager gets: a build configured as a distribution does (--prefix=/usr
--sysconfdir=/etc --localstatedir=/var --wrap-mode=nodownload) and installed into a DESTDIR
holds exactly the expected files -- sipcredd in sbin, sipcred in bin, the example configuration
in /etc/sipcred, the man pages, the systemd unit and the sysusers file in the directories
systemd's pkg-config file names -- and nothing under /var. The installed man pages render
without a groff warning, and `meson dist` makes a tarball that configures on its own.

The packager's build is a second build of this source tree in a temporary directory (the test
build's own prefix is not /usr); only sipcredd and sipcred are compiled, so it stays within a
few minutes on two cores. `meson dist` builds the tarball and runs its tests with the options of
that build; with every integration test that takes far longer than this test's timeout, so it
runs only with SIPCRED_TEST_DIST=1 (unit, fuzz and integration suites; its time is printed;
run this script directly or with `meson test --timeout-multiplier 0`). Otherwise the
packager's build has -Dintegration-tests=disabled, the tarball is made with --no-tests and the
unpacked tarball is configured.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean (it may be read-only)
import sipcredharness as h  # noqa: E402

MAN_PAGES = ['usr/share/man/man8/sipcredd.8', 'usr/share/man/man1/sipcred.1',
             'usr/share/man/man5/sipcredd.conf.5']


def pkg_dir(variable, fallback):
    """The directory systemd's pkg-config file names (relative to /), or the fallback."""
    if shutil.which('pkg-config'):
        rc, out = h.run(['pkg-config', '--define-variable=prefix=/usr', '--variable=' + variable,
                         'systemd'])
        if rc == 0 and out.strip().startswith('/'):
            return out.strip().lstrip('/')
    return fallback


def expected_files():
    unit_dir = pkg_dir('systemdsystemunitdir', 'usr/lib/systemd/system')
    sysusers_dir = pkg_dir('sysusersdir', 'usr/lib/sysusers.d')
    return {
        'usr/sbin/sipcredd',
        'usr/bin/sipcred',
        'etc/sipcred/sipcredd.conf.example',
        'usr/share/sipcred/make-test-ca.sh',
        unit_dir + '/sipcredd.service',
        sysusers_dir + '/sipcred.conf',
    } | set(MAN_PAGES), unit_dir, sysusers_dir


def installed_tree(root):
    """(files, directories) under root, relative."""
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            dirs.add(os.path.normpath(os.path.join(rel, d)))
        for f in filenames:
            files.add(os.path.normpath(os.path.join(rel, f)))
    return files, dirs


def check_install(tap, work, meson):
    build = os.path.join(work, 'build')
    dest = os.path.join(work, 'dest')
    t0 = time.monotonic()
    # meson dist reuses these options for the tarball's build and test run.
    its = [] if os.environ.get('SIPCRED_TEST_DIST') == '1' else ['-Dintegration-tests=disabled']
    rc, out = h.run([meson, 'setup', build, h.SOURCE_ROOT, '--prefix=/usr', '--sysconfdir=/etc',
                     '--localstatedir=/var', '--wrap-mode=nodownload'] + its, timeout=180)
    if not tap.ok(rc == 0, 'meson setup --prefix=/usr --sysconfdir=/etc --localstatedir=/var '
                  '--wrap-mode=nodownload succeeds'):
        tap.diag(out[-3000:])
        return None
    for section in ('Features', 'Directories'):
        tap.ok(section in out, 'meson setup prints the summary section ' + section)
    rc, out = h.run(['ninja', '-C', build, 'server/sipcredd', 'server/sipcred'], timeout=600)
    if not tap.ok(rc == 0, 'sipcredd and sipcred build'):
        tap.diag(out[-3000:])
        return None
    rc, out = h.run([meson, 'install', '-C', build, '--no-rebuild', '--destdir', dest],
                    timeout=180)
    if not tap.ok(rc == 0, 'meson install --destdir succeeds'):
        tap.diag(out[-3000:])
        return None
    tap.diag('configure, build and install: %.1f s' % (time.monotonic() - t0))

    want, unit_dir, sysusers_dir = expected_files()
    files, dirs = installed_tree(dest)
    tap.ok(files == want, 'the DESTDIR holds exactly the expected files (missing: %s; '
           'unexpected: %s)' % (sorted(want - files) or 'none', sorted(files - want) or 'none'))
    tap.ok(not any(p == 'var' or p.startswith('var/') for p in files | dirs),
           'nothing is installed under /var (systemd creates the state directory at start)')
    creds = os.path.join(dest, 'etc/sipcred/credentials')
    tap.ok(os.path.isdir(creds) and stat.S_IMODE(os.stat(creds).st_mode) == 0o700
           and not os.listdir(creds),
           'etc/sipcred/credentials (LoadCredential= source) is an empty directory, mode 0700')
    for exe in ('usr/sbin/sipcredd', 'usr/bin/sipcred', 'usr/share/sipcred/make-test-ca.sh'):
        p = os.path.join(dest, exe)
        tap.ok(os.path.isfile(p) and os.access(p, os.X_OK), exe + ' is executable')

    unit = os.path.join(dest, unit_dir, 'sipcredd.service')
    text = open(unit).read() if os.path.isfile(unit) else ''
    for line in ('ExecStart=/usr/sbin/sipcredd --config /etc/sipcred/sipcredd.conf',
                 'ExecStartPre=/usr/sbin/sipcredd --check-config --config '
                 '/etc/sipcred/sipcredd.conf',
                 'Type=notify', 'User=sipcred', 'StateDirectory=sipcred',
                 'RuntimeDirectory=sipcred',
                 'LoadCredential=sipcred:/etc/sipcred/credentials'):
        tap.ok(line in text.splitlines(), 'the installed unit has "%s"' % line)
    tap.ok(re.search(r'@[A-Z_]+@', text) is None,
           'the installed unit has no unsubstituted @VARIABLE@')
    sysusers = os.path.join(dest, sysusers_dir, 'sipcred.conf')
    users = open(sysusers).read() if os.path.isfile(sysusers) else ''
    tap.ok(any(line.split()[:2] == ['u', 'sipcred'] for line in users.splitlines()
               if line.strip() and not line.startswith('#')),
           'the sysusers file creates the user sipcred the unit runs as')

    rc, out = h.run([os.path.join(dest, 'usr/sbin/sipcredd'), '--version'])
    tap.ok(rc == 0 and '0.' in out, 'the installed sipcredd runs (--version: %s)' % out.strip())
    return dest


def check_man(tap, dest):
    if shutil.which('groff') is None:
        tap.skip('the man pages render without warnings', 'groff is not installed')
        return
    for page in MAN_PAGES:
        path = os.path.join(dest, page)
        if not os.path.isfile(path):
            tap.ok(False, '%s is installed' % page)
            continue
        # -ww: every warning; -z: no output, only diagnostics. A clean page prints nothing.
        res = subprocess.run(['groff', '-man', '-Tutf8', '-ww', '-z', path],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=60)
        err = res.stderr.decode('utf-8', 'replace').strip()
        tap.ok(res.returncode == 0 and err == '',
               '%s renders with groff -man -ww without warnings' % os.path.basename(page))
        if err:
            tap.diag(err[:2000])
        text = open(path).read()
        tap.ok(not any('@%s@' % v in text for v in ('VERSION', 'SYSCONFDIR', 'DATADIR')),
               '%s has its install paths filled in' % os.path.basename(page))


def check_dist(tap, work, meson):
    build = os.path.join(work, 'build')
    full = os.environ.get('SIPCRED_TEST_DIST') == '1'
    if not os.path.isdir(os.path.join(h.SOURCE_ROOT, '.git')) or shutil.which('git') is None:
        tap.skip('meson dist', 'the source tree is not a git checkout')
        return
    t0 = time.monotonic()
    # --allow-dirty: the tarball is HEAD; edits not yet committed are left out (a warning).
    argv = [meson, 'dist', '-C', build, '--formats', 'xztar', '--allow-dirty']
    if not full:
        argv.append('--no-tests')
    rc, out = h.run(argv, timeout=3600 if full else 300)
    tap.diag('meson dist%s: %.1f s' % ('' if full else ' --no-tests',
                                          time.monotonic() - t0))
    if not tap.ok(rc == 0, 'meson dist%s succeeds' % (' (build and tests of the tarball)'
                                                      if full else ' --no-tests')):
        tap.diag(out[-4000:])
        return
    tarball = os.path.join(build, 'meson-dist', 'sipcred-0.1.0.tar.xz')
    if not tap.ok(os.path.isfile(tarball), 'meson dist wrote %s' % os.path.basename(tarball)):
        return
    with tarfile.open(tarball) as tf:
        names = set(tf.getnames())
        src = os.path.join(work, 'dist-src')
        tf.extractall(src, filter='data') if hasattr(tarfile, 'data_filter') \
            else tf.extractall(src)
    top = 'sipcred-0.1.0/'
    needed = ['meson.build', 'meson_options.txt', 'data/systemd/sipcredd.service.in',
              'data/systemd/sipcred.sysusers', 'data/sipcredd.conf.example',
              'tests/integration/rfc4475/index.tsv', 'tests/integration/sipcredharness.py']
    missing = [n for n in needed if top + n not in names]
    tap.ok(not missing, 'the tarball has the sources the build and the tests read (missing: %s)'
           % (missing or 'none'))
    if full:
        return  # meson dist has built and tested the tarball itself
    # Without the tests: the unpacked tarball configures on its own, outside the checkout
    # (no file outside it, such as ../shared, is needed to configure).
    rc, out = h.run([meson, 'setup', os.path.join(work, 'dist-build'),
                     os.path.join(src, top), '--wrap-mode=nodownload'], timeout=180)
    tap.ok(rc == 0, 'the unpacked tarball configures with meson setup')
    if rc != 0:
        tap.diag(out[-3000:])


def main(tap):
    meson = shutil.which('meson')
    if meson is None or shutil.which('ninja') is None:
        tap.skip_all('missing tool(s): meson, ninja')
    work = tempfile.mkdtemp(prefix='sipcred-install-')
    try:
        dest = check_install(tap, work, meson)
        if dest is not None:
            check_man(tap, dest)
        check_dist(tap, work, meson)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    h.run_tap(main)
