#!/bin/sh
# Regenerates the seed corpus of fuzz-ident-cert in corpus/ident-cert/:
# a few small ECDSA P-256 certificates made with certtool (Debian:
# gnutls-bin), each in DER and PEM, plus truncated, bit-flipped and padded
# variants. Keys are made in a scratch directory and deleted; only
# certificates are written. Fixed dates keep the outcome of the target's
# profile check (at 2023-11-14, unix 1700000000) the same on every run.
#
#   tests/fuzz/corpus/make-cert-seeds.sh [OUTDIR]
set -eu

out=${1:-$(dirname "$0")/ident-cert}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() {
  certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 \
    --outfile="$tmp/$1.key" >/dev/null 2>&1
}

# cert NAME TEMPLATE_LINES [CA_NAME]: a certificate from the template lines,
# self-signed or issued by CA_NAME, written as NAME.der and NAME.pem.
cert() {
  name=$1
  printf '%s\n' "$2" >"$tmp/$name.tmpl"
  key "$name"
  if [ $# -ge 3 ]; then
    certtool --generate-certificate --load-privkey="$tmp/$name.key" \
      --load-ca-certificate="$tmp/$3.pem" --load-ca-privkey="$tmp/$3.key" \
      --template="$tmp/$name.tmpl" --outfile="$tmp/$name.pem" >/dev/null 2>&1
  else
    certtool --generate-self-signed --load-privkey="$tmp/$name.key" \
      --template="$tmp/$name.tmpl" --outfile="$tmp/$name.pem" >/dev/null 2>&1
  fi
  certtool --certificate-info --infile="$tmp/$name.pem" --outder \
    --outfile="$out/$name.der" >/dev/null 2>&1
  # Only the block: certtool --outfile also writes a text dump before it.
  sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$tmp/$name.pem" \
    >"$out/$name.pem"
}

# flip FILE OFFSET: toggles the lowest bit of the byte at OFFSET.
flip() {
  v=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
  # shellcheck disable=SC2059
  printf "\\$(printf '%03o' $((v ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

cert ca 'cn = "Example CA"
organization = "Example"
serial = 1
ca
cert_signing_key
crl_signing_key
activation_date = "2020-01-01 00:00:00"
expiration_date = "2040-01-01 00:00:00"'

cert user-alice 'cn = "alice"
serial = 2
uri = "sip:alice@example.com"
dns_name = "example.com"
signing_key
tls_www_client
activation_date = "2020-01-01 00:00:00"
expiration_date = "2040-01-01 00:00:00"' ca

# Every accepted scheme, an upper-case host and another user next to alice.
cert user-multi 'cn = "alice multi"
serial = 3
uri = "sip:bob@example.com"
uri = "sips:alice@EXAMPLE.COM"
uri = "im:alice@example.com"
uri = "pres:alice@example.com"
dns_name = "example.com"
dns_name = "sip.example.com"
signing_key
activation_date = "2020-01-01 00:00:00"
expiration_date = "2040-01-01 00:00:00"'

cert expired-alice 'cn = "alice"
serial = 4
uri = "sip:alice@example.com"
signing_key
activation_date = "2010-01-01 00:00:00"
expiration_date = "2011-01-01 00:00:00"'

cert notyet-alice 'cn = "alice"
serial = 5
uri = "sip:alice@example.com"
signing_key
activation_date = "2030-01-01 00:00:00"
expiration_date = "2031-01-01 00:00:00"'

cert nosan 'cn = "server.example.com"
serial = 6
signing_key
activation_date = "2020-01-01 00:00:00"
expiration_date = "2040-01-01 00:00:00"'

# Broken variants of the user certificate.
der="$out/user-alice.der"
size=$(wc -c <"$der")
head -c $((size / 2)) "$der" >"$out/user-alice-truncated.der"
head -c $((size - 1)) "$der" >"$out/user-alice-short1.der"
cp "$der" "$out/user-alice-trailing.der"
printf '\0' >>"$out/user-alice-trailing.der"
cp "$der" "$out/user-alice-flip-len.der"
flip "$out/user-alice-flip-len.der" 3
cp "$der" "$out/user-alice-flip-mid.der"
flip "$out/user-alice-flip-mid.der" $((size / 2))
cp "$out/user-multi.der" "$out/user-multi-flip-tail.der"
flip "$out/user-multi-flip-tail.der" $(($(wc -c <"$out/user-multi.der") - 90))

pem="$out/user-alice.pem"
head -c $(($(wc -c <"$pem") / 2)) "$pem" >"$out/user-alice-truncated.pem"
{ printf 'subject=alice\nissuer=Example CA\n'; cat "$pem"; cat "$out/ca.pem"; } \
  >"$out/user-alice-chain.pem"
sed 's/^MII/MIJ/' "$pem" >"$out/user-alice-badbase64.pem"
