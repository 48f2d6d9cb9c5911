#!/usr/bin/env bash
# Installs code-server from npm into a cached folder for process workspaces (idempotent).
#
# ${ONRAMP_TOOLS_CACHE:-$HOME/.cache/onramp}/codeserver-<version> holds the install; prints
# the `code-server` binary as its last line. A plain `npm install code-server@4.96.4` fails
# on a machine that reaches only the package registries: its postinstall runs `npm install`
# in lib/vscode, whose shrinkwrap takes @vscode/proxy-agent from a GitHub commit
# (codeload.github.com), and @vscode/ripgrep 1.15.9 downloads rg from GitHub releases (it
# has no switch to skip that; it only stops when its bin/ folder already exists). So this
# script does the postinstall's work in steps, with everything from the registry:
#   1. npm install --ignore-scripts code-server (the top-level packages);
#   2. point the git dependency at the registry tarball of the same version; npm checks the
#      shrinkwrap's integrity hash, so a different tarball would fail the install;
#   3. npm install --ignore-scripts in lib/vscode, put Debian's rg where @vscode/ripgrep
#      looks for it, then npm rebuild there (native modules are compiled: node-pty, spdlog,
#      kerberos, @parcel/watcher, native-watchdog; prebuilt downloads fail, builds work);
#   4. npm rebuild at the top: argon2's binding and code-server's own postinstall (links,
#      the built-in extensions' dependencies).
# code-server 4.96.4 declares Node 20 (newer releases need Node 24).
set -euo pipefail

VERSION="${ONRAMP_CODESERVER_VERSION:-4.96.4}"
CACHE="${ONRAMP_TOOLS_CACHE:-$HOME/.cache/onramp}"
DIR="$CACHE/codeserver-$VERSION"
BIN="$DIR/node_modules/.bin/code-server"
STAMP="$DIR/.installed-codeserver-$VERSION"
LOG="$CACHE/codeserver-install.log"

mkdir -p "$CACHE"
exec 9>"$CACHE/codeserver.lock"
flock 9

if [[ -f "$STAMP" && -x "$BIN" ]]; then
    echo "ensure-codeserver: ready (code-server $VERSION in $DIR)" >&2
    echo "$BIN"
    exit 0
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ensure-codeserver: node and npm are needed (Node 20 for code-server $VERSION)" >&2
    exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [[ "$major" != 20 ]]; then
    echo "ensure-codeserver: code-server $VERSION needs Node 20, found $(node -v)" >&2
    exit 1
fi

# Debian's rg stands in for @vscode/ripgrep's download; the rest builds native modules.
missing=()
command -v rg >/dev/null 2>&1 || missing+=(ripgrep)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
[[ -f /usr/include/gssapi/gssapi.h ]] || missing+=(libkrb5-dev)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ensure-codeserver: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "ensure-codeserver: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# node-gyp would download Node's headers from nodejs.org; use the installed ones.
if [[ -z "${npm_config_nodedir:-}" && -f /usr/include/node/node.h ]]; then
    export npm_config_nodedir=/usr
fi
# code-server's postinstall refuses to run as root unless this is set.
export npm_config_unsafe_perm=true
NPM=(npm --no-audit --no-fund --no-update-notifier)

step() {
    echo "ensure-codeserver: $1" >&2
    echo "== $1" >>"$LOG"
}
fail() {
    echo "ensure-codeserver: failed; the last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}
trap fail ERR

: >"$LOG"
started=$SECONDS
rm -rf "$DIR"
mkdir -p "$DIR"
cd "$DIR"
echo '{"private": true}' >package.json

step "npm install code-server@$VERSION (scripts off)"
"${NPM[@]}" install --ignore-scripts "code-server@$VERSION" >>"$LOG" 2>&1

VSCODE="$DIR/node_modules/code-server/lib/vscode"
step "lib/vscode: git dependencies from the registry instead"
node - "$VSCODE/npm-shrinkwrap.json" >>"$LOG" 2>&1 <<'JS'
const fs = require("fs");
const file = process.argv[2];
const wrap = JSON.parse(fs.readFileSync(file, "utf8"));
for (const [path, entry] of Object.entries(wrap.packages || {})) {
  if (!entry.resolved || !entry.resolved.startsWith("git+")) continue;
  const name = path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
  const base = name.split("/").pop();
  entry.resolved = `https://registry.npmjs.org/${name}/-/${base}-${entry.version}.tgz`;
  console.log(`${name}@${entry.version}: ${entry.resolved} (integrity kept)`);
}
fs.writeFileSync(file, JSON.stringify(wrap, null, 2) + "\n");
JS
step "lib/vscode: npm install (scripts off)"
(cd "$VSCODE" && "${NPM[@]}" install --omit=dev --ignore-scripts >>"$LOG" 2>&1)
step "lib/vscode: Debian's rg for @vscode/ripgrep"
mkdir -p "$VSCODE/node_modules/@vscode/ripgrep/bin"
ln -sf "$(command -v rg)" "$VSCODE/node_modules/@vscode/ripgrep/bin/rg"
step "lib/vscode: building native modules (several minutes)"
(cd "$VSCODE" && "${NPM[@]}" rebuild --foreground-scripts >>"$LOG" 2>&1)
step "argon2 and code-server's postinstall"
"${NPM[@]}" rebuild --foreground-scripts >>"$LOG" 2>&1

# --version writes a default config file: keep it out of the real home.
scratch="$(mktemp -d)"
version="$(XDG_CONFIG_HOME="$scratch" XDG_DATA_HOME="$scratch" "$BIN" --version 2>/dev/null | tail -n 1)"
rm -rf "$scratch"
case "$version" in
"$VERSION "*) ;;
*)
    echo "ensure-codeserver: $BIN --version said: $version" >&2
    exit 1
    ;;
esac
trap - ERR
touch "$STAMP"
echo "ensure-codeserver: installed code-server $VERSION in $((SECONDS - started))s" >&2
echo "$BIN"
