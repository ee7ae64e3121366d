#!/usr/bin/env bash
# usage: scripts/secrets.sh decrypt dev           .env.dev.sops -> .env (0600), what run-all.sh reads
#        scripts/secrets.sh edit dev|prod          edit .env.dev.sops / .env.prod.sops in $EDITOR
#        scripts/secrets.sh add-key AGE_KEY [dev|prod]
#                                                  let AGE_KEY (age1…) decrypt both files (or one):
#                                                  .sops.yaml, then `sops updatekeys` of the files
#        scripts/secrets.sh check                  every file decrypts with the keys here, and no
#                                                  plaintext secret is staged in git
#        scripts/secrets.sh new-dev                a development key of your own (made here if you
#                                                  have none) and .env.dev.sops made anew for it from
#                                                  the safe values in scripts/env.dev.defaults
#
# The secrets workflow of the original setup: dotenv files encrypted with sops to age
# keys, committed; .sops.yaml says which keys each file is encrypted to. The server's
# key is printed by infra/setup_server.sh: `add-key` it (prod), commit, tag; tag-deploy
# decrypts .env.prod.sops on the server. Private keys stay where they were made
# (~/.config/sops/age/keys.txt, or SOPS_AGE_KEY_FILE) and are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MATERIA_TEST_VENV:-$HOME/.cache/materia-test-venv}
[[ -x $venv/bin/sops ]] && PATH=$venv/bin:$PATH # setup-dev.sh --tests installs sops there
sops() { command sops --disable-version-check "$@"; }

say() { echo "secrets: $*" >&2; }
die() { say "$*"; exit "${2:-1}"; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
key_file=${SOPS_AGE_KEY_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/sops/age/keys.txt}
command -v sops >/dev/null || die "sops is not installed (scripts/setup-dev.sh --tests installs it)"
file_of() {
    case ${1:-} in
        dev | prod) echo ".env.$1.sops" ;;
        *) usage ;;
    esac
}

case ${1:-} in
decrypt)
    [[ ${2:-} == dev ]] || die "only the dev secrets are decrypted here (prod is decrypted on the server by tag-deploy)" 2
    if git ls-files --error-unmatch .env >/dev/null 2>&1; then
        die ".env is tracked by git: it must never be (git rm --cached .env)"
    fi
    tmp=$(mktemp .env.XXXXXX)
    trap 'rm -f "$tmp"' EXIT
    chmod 0600 "$tmp"
    sops decrypt --input-type dotenv --output-type dotenv .env.dev.sops >"$tmp" ||
        die "cannot decrypt .env.dev.sops: your age key is not one of its recipients (ask for the development key, or add-key yours from a machine that has one)"
    mv "$tmp" .env
    trap - EXIT
    say "decrypted .env.dev.sops into .env (mode 0600, ignored by git)"
    ;;
edit)
    f=$(file_of "${2:-}")
    exec sops edit --input-type dotenv --output-type dotenv "$f"
    ;;
add-key)
    key=${2:-}
    [[ $key =~ ^age1[0-9a-z]{58}$ ]] || die "expected an age public key (age1 and 58 letters and digits), got '${key}'" 2
    case ${3:-both} in
        both) which=(dev prod) ;;
        dev | prod) which=("$3") ;;
        *) usage ;;
    esac
    for env in "${which[@]}"; do
        # The rule's `age:` line is one comma-separated list: add the key once.
        awk -v rule="\\\\.env\\\\.$env\\\\.sops\$" -v key="$key" '
            index($0, "path_regex: " rule) { inrule = 1 }
            inrule && /^ *age: / {
                if (index($0, key) == 0) { sub(/ *$/, ""); if ($0 ~ /age: *$/) $0 = $0 key; else $0 = $0 "," key }
                inrule = 0
            }
            { print }' .sops.yaml >.sops.yaml.tmp
        mv .sops.yaml.tmp .sops.yaml
        grep -q "$key" .sops.yaml || die "no creation rule for .env.$env.sops in .sops.yaml"
        f=$(file_of "$env")
        if [[ -f $f ]]; then
            sops updatekeys --yes --input-type dotenv "$f" >/dev/null 2>&1 ||
                die "cannot re-encrypt $f: your age key is not one of its recipients"
            say "re-encrypted $f for ${key:0:12}…"
        fi
    done
    ;;
check)
    bad=0
    for f in .env.*.sops; do
        [[ -e $f ]] || continue
        if sops decrypt --input-type dotenv --output-type dotenv "$f" >/dev/null 2>&1; then
            say "$f: decrypts"
        else
            say "$f: does not decrypt with the age keys here"
            bad=1
        fi
    done
    # Nothing in plaintext staged: no .env file, no key file, no decrypted value.
    while IFS= read -r staged; do
        case $staged in
            .env | .env.* | */.env | *keys.txt | *.agekey)
                [[ $staged == *.sops ]] && continue
                say "$staged is staged: a plaintext secrets file must never be committed"
                bad=1
                ;;
        esac
    done < <(git diff --cached --name-only)
    for f in .env.*.sops; do
        [[ -e $f ]] || continue
        while IFS='=' read -r k v; do
            [[ ${#v} -ge 8 && -n $k && $k != \#* ]] || continue
            if git diff --cached -U0 | grep -v '^+++' | grep '^+' | grep -qF -- "$v"; then
                say "the value of $k (from $f) is staged in plaintext"
                bad=1
            fi
        done < <(sops decrypt --input-type dotenv --output-type dotenv "$f" 2>/dev/null || true)
    done
    ((bad == 0)) || exit 1
    say "ok"
    ;;
new-dev)
    if [[ ! -s $key_file ]]; then
        mkdir -p "$(dirname "$key_file")"
        (umask 077 && age-keygen -o "$key_file" 2>/dev/null)
        say "made an age key in $key_file (its private half never leaves this machine)"
    fi
    key=$(sed -n 's/^# public key: //p' "$key_file" | head -n 1)
    [[ -n $key ]] || die "no public key in $key_file"
    # The dev rule is this key alone; others are added with add-key.
    awk -v rule='path_regex: \\.env\\.dev\\.sops$' -v key="$key" '
        index($0, rule) { inrule = 1 }
        inrule && /^ *age: / { sub(/age: .*/, "age: " key); inrule = 0 }
        { print }' .sops.yaml >.sops.yaml.tmp
    mv .sops.yaml.tmp .sops.yaml
    sops encrypt --input-type dotenv --output-type dotenv --filename-override .env.dev.sops scripts/env.dev.defaults >.env.dev.sops.tmp
    mv .env.dev.sops.tmp .env.dev.sops
    say "made .env.dev.sops for ${key:0:12}… from scripts/env.dev.defaults"
    ;;
*) usage ;;
esac
