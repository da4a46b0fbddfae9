#!/bin/bash
# quickstart.sh -- the two commands of a fresh Debian 12 checkout.
#
#   data/quickstart.sh demo   install what is missing, build, and run sipcredd in the
#                             foreground on 127.0.0.1:5061 with a generated demo setup
#   data/quickstart.sh test   install what is missing (test tools too), build, run meson test
#
# Environment:
#   SIPCRED_DEMO_DIR   where the demo keeps everything it generates (default: ./demo at the
#                      top of the checkout); a rerun reuses what is there
#   SIPCRED_DEMO_PORT  the demo's TLS port (default 5061)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
    libsofia-sip-ua-glib-dev libgnutls28-dev liblmdb-dev gnutls-bin)
test_pkgs=(python3 sip-tester stunnel4 sipsak sslscan)

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
    meson test -C "$build" --print-errorlogs --no-suite bench || rc=$?
    return $rc
}

random_password() {
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

cmd_demo() {
    install_missing "${build_pkgs[@]}"
    do_build

    local port=${SIPCRED_DEMO_PORT:-5061}
    [[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || die "SIPCRED_DEMO_PORT must be a port number: $port"
    local dir=${SIPCRED_DEMO_DIR:-$root/demo}
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
EOF
    mv "$conf.tmp" "$conf"
    "$sipcredd" --check-config --config "$conf" || die "the demo configuration is invalid"

    local env_tmp="$dir/demo.env.tmp"
    {
        echo "# written by data/quickstart.sh demo; source it from a shell"
        echo "DOMAIN=$domain"
        echo "PORT=$port"
        echo "CA=$dir/ca.pem"
    } >"$env_tmp"
    for u in "${users[@]}"; do
        local aor="sip:$u@$domain" pwfile="$dir/$u.password"
        if [ ! -s "$pwfile" ]; then
            (umask 077 && random_password >"$pwfile")
        fi
        chmod 0600 "$pwfile"
        "$sipcred" --config "$conf" user add "$aor" --password-file "$pwfile" >/dev/null \
            || die "could not add the user $aor"
        "$sipcred" --config "$conf" cred import "$aor" "$dir/$u.pem" >/dev/null \
            || die "could not import the certificate of $aor"
        echo "USER_$u=$aor:$(cat "$pwfile")" >>"$env_tmp"
    done
    chmod 0600 "$env_tmp"
    mv "$env_tmp" "$dir/demo.env"

    cat >&2 <<EOF

sipcredd is starting on 127.0.0.1:$port (TLS) for $domain; Ctrl-C stops it.
Everything it uses is in $dir (demo.env holds DOMAIN, PORT, CA and the users).
Try it from another shell: subscribe to alice's certificate (the NOTIFY carries the DER):

  ( printf 'SUBSCRIBE sip:alice@$domain SIP/2.0\\r\\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK-try1\\r\\nMax-Forwards: 70\\r\\nFrom: <sip:bob@$domain>;tag=try1\\r\\nTo: <sip:alice@$domain>\\r\\nCall-ID: try1@127.0.0.1\\r\\nCSeq: 1 SUBSCRIBE\\r\\nContact: <sip:bob@127.0.0.1:1;transport=tls>\\r\\nEvent: certificate\\r\\nAccept: application/pkix-cert\\r\\nExpires: 60\\r\\nContent-Length: 0\\r\\n\\r\\n'; sleep 2 ) \\
    | gnutls-cli --x509cafile='$dir/ca.pem' --sni-hostname=$domain \\
        --verify-hostname=$domain -p $port 127.0.0.1 \\
    | grep -a -E '^(SIP/2.0 |NOTIFY |Content-Type|Content-Length|Subscription-State)'

EOF
    exec "$sipcredd" --config "$conf"
}

[ $# -eq 1 ] || usage
case $1 in
demo) cmd_demo ;;
test) cmd_test ;;
*) usage ;;
esac
