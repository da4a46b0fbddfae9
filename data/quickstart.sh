#!/bin/bash
# quickstart.sh -- the two commands of a fresh Debian 12 checkout.
#
#   data/quickstart.sh demo   install what is missing, build, and run sipcredd in the
#                             foreground on 127.0.0.1:5061 with a generated demo setup
#   data/quickstart.sh test   install what is missing (test tools too), build, run meson test;
#                             then the same tests in an ASan/UBSan build, and meson dist
#
# Environment:
#   SIPCRED_DEMO_DIR   where the demo keeps everything it generates (default: ./demo, relative
#                      to the current directory); a rerun reuses what is there
#   SIPCRED_DEMO_PORT  the demo's TLS port (default 5061)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
caller_dir=$PWD
build="$root/build"

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'quickstart: %s\n' "$*" >&2
    exit 1
}

usage() {
    echo "usage: $0 demo|test" >&2
    exit 2
}

build_pkgs=(meson ninja-build pkg-config gcc libglib2.0-dev libsofia-sip-ua-dev
    libsofia-sip-ua-glib-dev libgnutls28-dev liblmdb-dev libssl-dev gnutls-bin
    libsystemd-dev libjemalloc-dev)
test_pkgs=(python3 sip-tester stunnel4 sipsak sslscan curl openssl kamailio kamailio-tls-modules
    gnuplot-nox faketime
    systemd groff-base)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# install PKG...: apt-get install the packages that dpkg does not know as installed.
install_missing() {
    local missing=() p
    command -v dpkg-query >/dev/null || die "not a Debian system: install ${*} by hand"
    for p in "$@"; do
        installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed: ${missing[*]}"
}

# build [MESON_OPTION...]: configure build/ once (reconfigure when it exists), then ninja.
do_build() {
    cd "$root"
    if [ -f "$build/meson-private/coredata.dat" ]; then
        if ! meson setup --reconfigure "$build" "$@" >/dev/null; then
            say "the build directory is stale; recreating it"
            meson setup --wipe "$build" "$@" || die "meson setup failed"
        fi
    else
        say "configuring $build"
        meson setup "$build" "$@" || die "meson setup failed"
    fi
    say "building"
    ninja -C "$build" || die "build failed"
}

cmd_test() {
    install_missing "${build_pkgs[@]}" "${test_pkgs[@]}"
    do_build -Dintegration-tests=enabled
    say "running the tests"
    cd "$root"
    local rc=0
    meson test -C "$build" --print-errorlogs --no-suite bench --no-suite soak || rc=$?

    # The same tests in an ASan/UBSan build: memory errors, leaks and undefined behaviour
    # fail them (SIPCRED_TEST_SANITIZE=0 skips this part).
    if [ "${SIPCRED_TEST_SANITIZE:-1}" != 0 ]; then
        local asan="$root/build-asan"
        say "building with AddressSanitizer and UndefinedBehaviorSanitizer in $asan"
        if [ -f "$asan/meson-private/coredata.dat" ]; then
            meson setup --reconfigure "$asan" >/dev/null || rc=1
        else
            meson setup "$asan" -Db_sanitize=address,undefined -Db_lundef=false \
                -Dintegration-tests=enabled >/dev/null || rc=1
        fi
        if ninja -C "$asan" >/dev/null; then
            say "running the tests under the sanitizers"
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                meson test -C "$asan" --print-errorlogs --no-suite bench --no-suite soak || rc=$?
        else
            say "the sanitizer build failed"
            rc=1
        fi
    fi

    # meson dist: the release tarball builds and passes its tests
    # (SIPCRED_CI_DIST=0 skips this part; it needs a git checkout).
    if [ "${SIPCRED_CI_DIST:-1}" != 0 ] && [ -d "$root/.git" ]; then
        say "meson dist: building and testing the release tarball"
        meson dist -C "$build" --allow-dirty --formats xztar || rc=$?
    fi
    return $rc
}

random_password() {
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

# write_try_script FILE: a SUBSCRIBE through gnutls-cli against the demo, for people to try.
write_try_script() {
    cat >"$1" <<'EOF'
#!/bin/bash
# subscribe.sh [USER]: SUBSCRIBE to USER's certificate (default alice) on the demo sipcredd
# and show the heads of the 200 and the NOTIFY. Written by data/quickstart.sh demo.
set -euo pipefail
. "$(dirname "$0")/demo.env"
user=${1:-alice}
[[ $user =~ ^[A-Za-z0-9._-]+$ ]] || { echo "usage: $0 [USER]" >&2; exit 2; }
tag=$RANDOM$RANDOM
crlf=$'\r\n'
request="SUBSCRIBE sip:$user@$DOMAIN SIP/2.0$crlf"
request+="Via: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK-$tag$crlf"
request+="Max-Forwards: 70$crlf"
request+="From: <sip:demo@$DOMAIN>;tag=$tag$crlf"
request+="To: <sip:$user@$DOMAIN>$crlf"
request+="Call-ID: $tag@127.0.0.1$crlf"
request+="CSeq: 1 SUBSCRIBE$crlf"
request+="Contact: <sip:demo@127.0.0.1:1;transport=tls>$crlf"
request+="Event: certificate$crlf"
request+="Accept: application/pkix-cert$crlf"
request+="Expires: 60$crlf"
request+="Content-Length: 0$crlf$crlf"
{ printf '%s' "$request"; sleep 2; } |
    gnutls-cli --x509cafile="$CA" --sni-hostname="$DOMAIN" --verify-hostname="$DOMAIN" \
        -p "$PORT" 127.0.0.1 2>/dev/null |
    grep -a -E '^(SIP/2.0 |NOTIFY |Event|Subscription-State|Content-Type|Content-Length|Date|Identity)'
EOF
    chmod 0755 "$1"
}

cmd_demo() {
    install_missing "${build_pkgs[@]}"
    do_build

    local port=${SIPCRED_DEMO_PORT:-5061}
    if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die "SIPCRED_DEMO_PORT must be a port number: $port"
    fi
    local dir=${SIPCRED_DEMO_DIR:-./demo}
    [[ $dir == /* ]] || dir="$caller_dir/$dir"  # relative to where the script was started
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 0700 "$dir"
    local domain=example.com
    local users=(alice bob)
    local sipcred="$build/server/sipcred" sipcredd="$build/server/sipcredd"
    local conf="$dir/sipcredd.conf"

    say "demo directory $dir"
    local aors=() u
    for u in "${users[@]}"; do
        aors+=("sip:$u@$domain")
    done
    bash "$root/data/make-test-ca.sh" "$dir" "$domain" -- "${aors[@]}" >/dev/null

    # The master key wraps the users' server-held private keys in the store.
    if [ ! -e "$dir/master.key" ]; then
        "$sipcred" keygen "$dir/master.key" >/dev/null || die "could not create the master key"
    fi

    # The configuration is regenerated each time, so a new port takes effect; paths are
    # relative to it.
    cat >"$conf.tmp" <<EOF
# sipcredd.conf written by data/quickstart.sh demo. Every key: data/sipcredd.conf.example
[server]
domains=$domain
listen=127.0.0.1:$port
state-dir=state

[domain $domain]
certificate=$domain.pem
key=$domain.key

[store]
master-key=master.key
EOF
    mv "$conf.tmp" "$conf"
    "$sipcredd" --check-config --config "$conf" || die "the demo configuration is invalid"

    local env_tmp="$dir/demo.env.tmp"
    {
        echo "# written by data/quickstart.sh demo; source it from a shell"
        echo "DOMAIN=$domain"
        echo "PORT=$port"
        printf 'CA=%q\n' "$dir/ca.pem"
    } >"$env_tmp"
    for u in "${users[@]}"; do
        local aor="sip:$u@$domain" pwfile="$dir/$u.password"
        if [ ! -s "$pwfile" ]; then
            (umask 077 && random_password >"$pwfile")
        fi
        chmod 0600 "$pwfile"
        "$sipcred" --config "$conf" user add "$aor" --password-file "$pwfile" >/dev/null \
            || die "could not add the user $aor"
        "$sipcred" --config "$conf" cred import "$aor" --cert "$dir/$u.pem" \
            --key "$dir/$u.key" >/dev/null \
            || die "could not import the certificate of $aor"
        echo "USER_$u=$aor:$(cat "$pwfile")" >>"$env_tmp"
    done
    chmod 0600 "$env_tmp"
    mv "$env_tmp" "$dir/demo.env"

    write_try_script "$dir/subscribe.sh"

    cat >&2 <<EOF

sipcredd is starting on 127.0.0.1:$port (TLS) for $domain; Ctrl-C stops it.
Everything it uses is in $dir (demo.env holds DOMAIN, PORT, CA and the users).
Try it from another shell: subscribe to alice's certificate with gnutls-cli
(the NOTIFY carries her certificate as DER; the script shows the SIP heads):

  bash '$dir/subscribe.sh' alice

EOF
    exec "$sipcredd" --config "$conf"
}

[ $# -eq 1 ] || usage
case $1 in
demo) cmd_demo ;;
test) cmd_test ;;
*) usage ;;
esac
