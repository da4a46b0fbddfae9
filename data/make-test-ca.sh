#!/bin/bash
# make-test-ca.sh -- a throw-away test CA with domain and user certificates.
#
#   data/make-test-ca.sh DIR DOMAIN [DOMAIN...] -- USER_AOR...
#
# Creates in DIR (with certtool from gnutls-bin):
#   ca.pem, ca.key             the test CA
#   DOMAIN.pem, DOMAIN.key     per served domain: SAN dNSName DOMAIN and URI sip:DOMAIN,
#                              EKU serverAuth + id-kp-sipDomain, for the TLS edge
#   USER.pem, USER.key         per user AOR (sip:USER@DOMAIN): SAN URIs sip:, im: and pres:
#                              of the AOR, EKU emailProtection + id-kp-sipDomain
# Existing files are reused as long as the certificate still verifies against ca.pem, so a
# rerun changes nothing. Private keys are mode 0600. For tests and the demo only: a real
# deployment uses certificates from a real CA.
set -euo pipefail

usage() {
    echo "usage: $0 DIR DOMAIN [DOMAIN...] -- USER_AOR..." >&2
    exit 2
}

die() {
    echo "make-test-ca: $*" >&2
    exit 1
}

[ $# -ge 2 ] || usage
dir=$1
shift

domains=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    domains+=("$1")
    shift
done
[ ${#domains[@]} -ge 1 ] || usage
users=()
if [ $# -gt 0 ]; then
    shift  # the "--"
    users=("$@")
fi

command -v certtool >/dev/null || die "certtool not found (apt-get install gnutls-bin)"

# Names end up in file names and certtool templates: allow only plain DNS names and user parts.
valid_domain() { [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$ ]]; }
valid_user() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$ ]]; }

for d in "${domains[@]}"; do
    valid_domain "$d" || die "bad domain name: $d"
done

mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Key generation: RSA 2048, written by certtool under umask 077 (mode 0600).
make_key() {
    certtool --generate-privkey --key-type=rsa --bits=2048 --outfile "$1" 2>/dev/null \
        || die "certtool could not generate $1"
    chmod 0600 "$1"
}

# True when certificate $1 exists, its key $2 exists, and it verifies against the CA now.
reusable() {
    [ -s "$1" ] && [ -s "$2" ] || return 1
    certtool --verify --load-ca-certificate "$dir/ca.pem" --infile "$1" >/dev/null 2>&1
}

# The CA: reused when both halves are present.
if [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ]; then
    echo "make-test-ca: reusing $dir/ca.pem"
else
    make_key "$dir/ca.key"
    cat >"$tmp/ca.tmpl" <<EOF
cn = "sipcred test CA"
organization = "sipcred test"
expiration_days = 3650
ca
cert_signing_key
crl_signing_key
EOF
    certtool --generate-self-signed --load-privkey "$dir/ca.key" \
        --template "$tmp/ca.tmpl" --outfile "$dir/ca.pem" >/dev/null 2>&1 \
        || die "certtool could not create the CA"
    chmod 0644 "$dir/ca.pem"
    echo "make-test-ca: created $dir/ca.pem"
fi

# sign NAME TEMPLATE: issue $dir/NAME.pem for $dir/NAME.key unless it is reusable.
sign() {
    local name=$1 tmpl=$2
    if reusable "$dir/$name.pem" "$dir/$name.key"; then
        echo "make-test-ca: reusing $dir/$name.pem"
        return
    fi
    [ -s "$dir/$name.key" ] || make_key "$dir/$name.key"
    certtool --generate-certificate --load-privkey "$dir/$name.key" \
        --load-ca-certificate "$dir/ca.pem" --load-ca-privkey "$dir/ca.key" \
        --template "$tmpl" --outfile "$dir/$name.pem" >/dev/null 2>&1 \
        || die "certtool could not sign $name.pem"
    chmod 0644 "$dir/$name.pem"
    echo "make-test-ca: created $dir/$name.pem"
}

for d in "${domains[@]}"; do
    cat >"$tmp/$d.tmpl" <<EOF
cn = "$d"
organization = "sipcred test"
expiration_days = 825
dns_name = "$d"
uri = "sip:$d"
tls_www_server
key_purpose_oid = 1.3.6.1.5.5.7.3.20
signing_key
encryption_key
EOF
    sign "$d" "$tmp/$d.tmpl"
done

for aor in "${users[@]}"; do
    addr=${aor#sip:}
    user=${addr%@*}
    host=${addr#*@}
    [ "$user" != "$addr" ] || die "user AOR needs user@domain: $aor"
    valid_user "$user" || die "bad user part: $aor"
    valid_domain "$host" || die "bad domain in AOR: $aor"
    cat >"$tmp/user.tmpl" <<EOF
cn = "$user"
organization = "sipcred test"
expiration_days = 825
uri = "sip:$user@$host"
uri = "im:$user@$host"
uri = "pres:$user@$host"
email_protection_key
key_purpose_oid = 1.3.6.1.5.5.7.3.20
signing_key
encryption_key
EOF
    sign "$user" "$tmp/user.tmpl"
done
