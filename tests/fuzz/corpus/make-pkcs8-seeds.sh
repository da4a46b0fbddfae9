#!/bin/sh
# Regenerates the seed corpus of fuzz-ident-pkcs8 in corpus/ident-pkcs8/:
# the target's fixed ECDSA P-256 key (read from fuzz-ident-pkcs8.c, so that
# the matcher's success path is reached; the key is public and trusted by
# nothing) as plain PKCS#8 and SEC1, and encrypted PKCS#8 with PBES2
# aes-128 and aes-256 and with PBES1 3des (which must be refused), each in
# PEM and DER; another P-256 key and a 1024-bit RSA key (PKCS#1) that do not
# match; then truncated, bit-flipped and padded variants. Needs certtool
# (Debian: gnutls-bin) and openssl (plain PKCS#8 and DER conversions).
# Encryption salts are random, so the encrypted files change on every run.
#
#   tests/fuzz/corpus/make-pkcs8-seeds.sh [OUTDIR]
set -eu

here=$(dirname "$0")
out=${1:-$here/ident-pkcs8}
src=$here/../fuzz-ident-pkcs8.c
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The fixed key: the PEM lines of FIXED_KEY_PEM without the C quoting.
sed -n '/"-----BEGIN PRIVATE KEY-----/,/"-----END PRIVATE KEY-----/p' "$src" |
  sed 's/^ *"//; s/\\n";*$//' >"$tmp/fixed.key"
openssl pkey -in "$tmp/fixed.key" -noout

# flip FILE OFFSET: toggles the lowest bit of the byte at OFFSET.
flip() {
  v=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
  # shellcheck disable=SC2059
  printf "\\$(printf '%03o' $((v ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# pem_block FILE: only the PEM block (certtool also writes a text dump).
pem_block() {
  sed -n '/^-----BEGIN /,/^-----END /p' "$1"
}

# Plain keys.
openssl pkey -in "$tmp/fixed.key" -out "$out/fixed-pkcs8.pem"
openssl pkcs8 -topk8 -nocrypt -in "$tmp/fixed.key" -outform DER -out "$out/fixed-pkcs8.der"
openssl ec -in "$tmp/fixed.key" -out "$out/fixed-sec1.pem" 2>/dev/null
openssl ec -in "$tmp/fixed.key" -outform DER -out "$out/fixed-sec1.der" 2>/dev/null

certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 \
  --outfile="$tmp/other.key" >/dev/null 2>&1
openssl pkcs8 -topk8 -nocrypt -in "$tmp/other.key" -outform DER -out "$out/other-pkcs8.der"
pem_block "$tmp/other.key" >"$out/other-sec1.pem"

certtool --generate-privkey --key-type=rsa --bits=1024 --outfile="$tmp/rsa.key" >/dev/null 2>&1
openssl rsa -in "$tmp/rsa.key" -traditional -out "$out/rsa1024-pkcs1.pem" 2>/dev/null
openssl rsa -in "$tmp/rsa.key" -traditional -outform DER -out "$out/rsa1024-pkcs1.der" \
  2>/dev/null

# Encrypted PKCS#8 of the fixed key: PBES2 (accepted) and PBES1 (refused).
for cipher in aes-128 aes-256 3des-pkcs12; do
  name=fixed-enc-$cipher
  [ "$cipher" = 3des-pkcs12 ] && name=fixed-enc-pbes1-3des
  certtool --to-p8 --load-privkey="$tmp/fixed.key" --password=fuzz --pkcs-cipher="$cipher" \
    --no-text --outfile="$tmp/enc.pem" >/dev/null 2>&1
  pem_block "$tmp/enc.pem" >"$out/$name.pem"
  openssl base64 -d -in "$out/$name.pem" -out /dev/null 2>/dev/null || true
  sed '1d;$d' "$out/$name.pem" | openssl base64 -d -out "$out/$name.der"
done

# Broken and borderline variants.
for f in fixed-pkcs8 fixed-enc-aes-128; do
  der=$out/$f.der
  size=$(wc -c <"$der")
  head -c $((size / 2)) "$der" >"$out/$f-truncated.der"
  head -c $((size - 1)) "$der" >"$out/$f-short1.der"
  cp "$der" "$out/$f-trailing.der"
  printf '\0' >>"$out/$f-trailing.der"
  cp "$der" "$out/$f-flip-len.der"
  flip "$out/$f-flip-len.der" 2
  cp "$der" "$out/$f-flip-mid.der"
  flip "$out/$f-flip-mid.der" $((size / 2))
  cp "$der" "$out/$f-flip-tail.der"
  flip "$out/$f-flip-tail.der" $((size - 3))
done
# The private scalar's last byte (the SEC1 OCTET STRING ends at offset 68):
# the public key no longer fits it.
cp "$out/fixed-pkcs8.der" "$out/fixed-pkcs8-flip-scalar.der"
flip "$out/fixed-pkcs8-flip-scalar.der" 67
# PBES2 header bytes: the salt and the iteration count.
cp "$out/fixed-enc-aes-256.der" "$out/fixed-enc-aes-256-flip-hdr.der"
flip "$out/fixed-enc-aes-256-flip-hdr.der" 40

pem=$out/fixed-enc-aes-128.pem
head -c $(($(wc -c <"$pem") / 2)) "$pem" >"$out/fixed-enc-aes-128-truncated.pem"
sed '2s/^M/N/' "$pem" >"$out/fixed-enc-aes-128-badbase64.pem"
{ printf 'Bag Attributes\n'; cat "$pem"; cat "$out/fixed-pkcs8.pem"; } \
  >"$out/fixed-enc-then-plain.pem"
# A legacy OpenSSL-encrypted PEM header, which the matcher must refuse.
{ sed -n 1p "$out/fixed-sec1.pem"
  printf 'Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n'
  sed '1d' "$out/fixed-sec1.pem"; } >"$out/fixed-sec1-legacy-encrypted.pem"
# An encrypted label around a plain PKCS#8 body: the checker must refuse it.
sed 's/PRIVATE KEY/ENCRYPTED PRIVATE KEY/' "$out/fixed-pkcs8.pem" >"$out/plain-as-encrypted.pem"
