#!/usr/bin/env bash
# Refresh xt_submit/services/report_vendor/: the charting libraries `xt report` inlines in its page
# (Vega, Vega-Lite, vega-embed), each package's minified browser build and LICENSE, ORIGIN.md, and
# THIRD_PARTY_NOTICES.md (the licence of each package the builds bundle).
# The versions are pinned here; to move to others, edit them (or pass them) and run again:
#   scripts/update_report_vendor.sh [VEGA VEGA_LITE VEGA_EMBED]
# Needs npm, node and the npm registry; `npm pack` checks each tarball against the registry's integrity.
set -euo pipefail
VEGA=${1:-5.33.1}
VEGA_LITE=${2:-5.23.0}
VEGA_EMBED=${3:-6.29.0}

# The packages the builds bundle (as each build's source map names them, under node_modules/), at the
# version each build holds: the one whose npm tarball has, byte for byte, every source the map carries
# (sourcesContent); where several versions do, the newest (their licence files are the same too).
# A registry resolving the ranges today may give newer ones: these are what the builds were made with.
# Vega's own packages (the vega repository's packages/vega-*, which its map names as ../../vega-*, built
# from the repository, so not always byte for byte their tarballs) are at the versions vega's
# package.json depends on; the two it reaches only through others are listed (their tarballs match).
# This script checks the list against the source maps and each tarball's files against the sources,
# and stops if either differs.
BUNDLED="
vega vega-canvas 1.2.7
vega vega-selections 5.6.3
vega d3-array 3.2.4
vega d3-color 3.1.0
vega d3-delaunay 6.0.4
vega d3-dispatch 3.0.1
vega d3-dsv 3.0.1
vega d3-force 3.0.0
vega d3-format 3.1.0
vega d3-geo 3.1.0
vega d3-geo-projection 4.0.0
vega d3-hierarchy 3.1.2
vega d3-interpolate 3.0.1
vega d3-path 3.1.0
vega d3-quadtree 3.0.1
vega d3-scale 4.0.2
vega d3-scale-chromatic 3.1.0
vega d3-shape 3.2.0
vega d3-time 3.1.0
vega d3-time-format 4.1.0
vega d3-timer 3.0.1
vega delaunator 5.0.0
vega internmap 2.0.3
vega robust-predicates 3.0.1
vega topojson-client 3.1.0
vega-embed fast-json-patch 3.1.1
vega-embed json-stringify-pretty-compact 4.0.0
vega-embed semver 7.6.3
vega-embed vega-interpreter 1.0.5
vega-embed vega-schema-url-parser 2.2.0
vega-embed vega-themes 2.15.0
vega-embed vega-tooltip 0.35.2
vega-embed vega-util 1.17.2
"

dest=$(cd "$(dirname "$0")/.." && pwd)/xt_submit/services/report_vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
cd "$work"

rows=""
files=""
for spec in "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED"; do
  name=${spec%@*}
  version=${spec#*@}
  url=$(npm view "$spec" dist.tarball)
  tarball=$(npm pack --silent "$spec" | tail -n 1)
  mkdir "$name"
  tar xzf "$tarball" -C "$name"
  build="$name/package/build/$name.min.js"
  # the page inlines it in a <script> element: these would end the element or change how it is parsed
  if grep -qiE '</script|<!--' "$build"; then
    echo "$spec: $build holds '</script' or '<!--'; it cannot be inlined as it is" >&2
    exit 1
  fi
  cp "$build" "$dest/$name.min.js"
  if [ -f "$name/package/LICENSE" ]; then
    cp "$name/package/LICENSE" "$dest/$name.LICENSE"
  elif [ ! -f "$dest/$name.LICENSE" ]; then
    # vega's tarball carries none: its LICENSE is the repository's (github.com/vega/vega)
    echo "$spec: its tarball has no LICENSE; put the repository's in $dest/$name.LICENSE" >&2
    exit 1
  fi
  rows+="| $name | $version | $url | \`$(sha256sum "$tarball" | cut -d' ' -f1)\` |"$'\n'
  files+="| $name.min.js | $(wc -c <"$dest/$name.min.js") | \`$(sha256sum "$dest/$name.min.js" | cut -d' ' -f1)\` |"$'\n'
  files+="| $name.LICENSE | $(wc -c <"$dest/$name.LICENSE") | \`$(sha256sum "$dest/$name.LICENSE" | cut -d' ' -f1)\` |"$'\n'
done

# --- THIRD_PARTY_NOTICES.md: the bundled packages, from the builds' source maps (in the tarballs) ---
cat >notices.js <<'JS'
// node notices.js specs|write WORK DEST < BUNDLED: `specs` prints the package@version tarballs to fetch;
// `write` checks them against the builds' sources, writes DEST/THIRD_PARTY_NOTICES.md and prints
// ORIGIN.md's table of bundled packages.
"use strict";
const fs = require("fs"), path = require("path");
const [mode, work, dest] = process.argv.slice(2);
const BUILDS = ["vega", "vega-lite", "vega-embed"];
const fail = message => { console.error(`update_report_vendor: ${message}`); process.exit(1); };
const pins = new Map();
for (const line of fs.readFileSync(0, "utf8").split("\n").map(l => l.trim()).filter(Boolean)) {
  const [build, name, version, extra] = line.split(/\s+/);
  if (!BUILDS.includes(build) || !version || extra) fail(`BUNDLED: not 'build package version': ${line}`);
  pins.set(`${build} ${name}`, version);
}
const packages = new Map();  // name@version -> {name, version, builds, sources, workspace}
const own = [];              // [package, source text] of the sources that are no bundled package's
for (const build of BUILDS) {
  const root = path.join(work, build, "package");
  const map = JSON.parse(fs.readFileSync(path.join(root, "build", `${build}.min.js.map`), "utf8"));
  const deps = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")).dependencies || {};
  if (!map.sourcesContent || map.sourcesContent.length !== map.sources.length) fail(`${build}: its map has no sources`);
  map.sources.forEach((source, i) => {
    let m = source.match(/(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/), name, file, version, workspace = false;
    let pinned = true;
    if (m) {
      [name, file] = [m[1], m[2]];
      version = pins.get(`${build} ${name}`);
      if (!version) fail(`${build}.min.js bundles ${name}: add it to BUNDLED with the version whose files match`);
    } else if ((m = source.match(/^\.\.\/\.\.\/(vega-[^/]+)\/(.*)$/))) {  // a package of the vega repository
      [name, file, workspace] = [m[1], m[2], true];
      pinned = pins.has(`${build} ${name}`);
      version = pinned ? pins.get(`${build} ${name}`) : (deps[name] || "").replace(/^[~^]/, "");
      if (!/^\d+\.\d+\.\d+$/.test(version)) fail(`${build}: bundles ${name}, not a dependency of its own: add it to BUNDLED`);
    } else {
      own.push([build, map.sourcesContent[i]]);
      return;
    }
    const key = `${name}@${version}`;
    const entry = packages.get(key) || {name, version, builds: new Set(), sources: new Map(), workspace, pinned};
    entry.builds.add(build);
    entry.sources.set(file, map.sourcesContent[i]);
    if (workspace) own.push([name, map.sourcesContent[i]]);
    packages.set(key, entry);
  });
}
for (const [pin, version] of pins) {
  const [build, name] = pin.split(" ");
  if (![...packages.values()].some(e => e.name === name && e.version === version && e.builds.has(build)))
    fail(`BUNDLED names ${name} ${version} in ${build}, whose map has no source of it`);
}
const keys = [...packages.keys()].sort((a, b) => {
  const [x, y] = [packages.get(a), packages.get(b)];
  const first = e => BUILDS.indexOf([...e.builds][0]);
  return first(x) - first(y) || (x.name < y.name ? -1 : x.name > y.name ? 1 : 0) || (x.version < y.version ? -1 : 1);
});
if (mode === "specs") {
  keys.forEach(key => console.log(key));
  process.exit(0);
}
const lines = [], table = [];
const tarballUrl = (name, version) => `https://registry.npmjs.org/${name}/-/${name.split("/").pop()}-${version}.tgz`;
for (const key of keys) {
  const e = packages.get(key);
  const root = path.join(work, "deps", key, "package");
  const meta = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
  const licence = typeof meta.license === "string" ? meta.license : fail(`${key}: its package.json names no licence`);
  if (e.pinned) {  // not a workspace package at vega's version: it may be built otherwise than its tarball
    for (const [file, text] of e.sources) {
      const p = path.join(root, file);
      if (!fs.existsSync(p) || fs.readFileSync(p, "utf8") !== text)
        fail(`${key}: its ${file} is not what ${[...e.builds].join(", ")}.min.js bundles; pin the version whose files are`);
    }
  }
  const file = fs.readdirSync(root).filter(f => /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f)).sort()[0];
  let text, from;
  if (file) {
    text = fs.readFileSync(path.join(root, file), "utf8");
    from = `\`${file}\` of its npm tarball, ${tarballUrl(e.name, e.version)}`;
  } else if (e.workspace || /github\.com[/:]vega\/vega(\.git)?$/.test((meta.repository || {}).url || "")) {
    text = fs.readFileSync(path.join(dest, "vega.LICENSE"), "utf8");
    from = "its tarball carries none: the vega repository's `LICENSE` (github.com/vega/vega), as vega.LICENSE";
  } else {
    fail(`${key}: its tarball has no LICENSE`);
  }
  text = text.replace(/\r\n?/g, "\n").replace(/\s+$/, "");
  if (!text || text.includes("```")) fail(`${key}: its licence text is empty or holds a code fence`);
  const builds = [...e.builds].map(b => `${b}.min.js`).join(", ");
  table.push(`| ${e.name} | ${e.version} | ${licence} | ${builds} |`);
  lines.push(`## ${e.name} ${e.version}`, "", `- bundled in: ${builds}`, `- licence: ${licence}`,
             `- licence text: ${from}`, "", "```text", text, "```", "");
}
// the notices that the Vega packages' own sources carry for code they adapted (the minified builds drop them)
const blocks = [], attributions = [];
const ATTRIBUTION = /(adapted from|ported from|licen[cs]e:|mit license|based on https?:|source: https?:|\bfrom https?:\/\/github\.com)/i;
for (const [name, text] of own) {
  for (const block of text.match(/\/\*[\s\S]*?\*\//g) || []) {
    if (/copyright/i.test(block) && !blocks.some(([, b]) => b === block)) blocks.push([name, block]);
  }
  for (const line of text.split("\n")) {
    const comment = line.trim();
    if (/^(\/\/|\/?\*)/.test(comment) && ATTRIBUTION.test(comment) && !attributions.includes(`${name}: ${comment}`))
      attributions.push(`${name}: ${comment}`);
  }
}
const head = [
  "# Third-party notices of the vendored charting libraries of `xt report`", "",
  "vega.min.js, vega-lite.min.js and vega-embed.min.js (see ORIGIN.md; their own licences are the",
  "`<name>.LICENSE` files) bundle the packages below. Each section names a package, the version the build",
  "holds and its licence, with the licence text of that version's npm tarball.", "",
  "The packages and versions come from the builds' source maps (`build/<name>.min.js.map` in each",
  "tarball, not shipped here): each names the files it bundles and carries their text. A package under",
  "`node_modules/` is at the version whose tarball has every one of those files byte for byte (where",
  "several versions do, the newest of them); the vega repository's own packages (`../../vega-*`) at the",
  "version vega's package.json depends on. Written by `scripts/update_report_vendor.sh`; do not edit.", ""];
const tail = blocks.length || attributions.length ? [
  "## Code adapted in the Vega packages' own sources", "",
  "Comments of the bundled Vega packages' sources that credit code they adapted, and the notices they",
  "carry in full (the minified builds drop comments).", "",
  "```text", ...attributions, "```", "",
  ...blocks.flatMap(([name, block]) => [`From ${name}:`, "", "```text", block, "```", ""])] : [];
fs.writeFileSync(path.join(dest, "THIRD_PARTY_NOTICES.md"), head.concat(lines, tail).join("\n").replace(/\n+$/, "\n"));
console.log(table.join("\n"));
JS
printf '%s\n' "$BUNDLED" | node notices.js specs "$work" "$dest" >specs.txt
mkdir deps
(cd deps && xargs npm pack --silent <../specs.txt >/dev/null)
while read -r spec; do
  name=${spec%@*}
  version=${spec##*@}
  mkdir -p "deps/$spec"
  tar xzf "deps/${name//\//-}-$version.tgz" -C "deps/$spec"
done <specs.txt
bundled=$(printf '%s\n' "$BUNDLED" | node notices.js write "$work" "$dest")
files+="| THIRD_PARTY_NOTICES.md | $(wc -c <"$dest/THIRD_PARTY_NOTICES.md") | \`$(sha256sum "$dest/THIRD_PARTY_NOTICES.md" | cut -d' ' -f1)\` |"$'\n'

cat >"$dest/ORIGIN.md" <<EOF
# Vendored charting libraries of \`xt report\`

\`services/html_report.py\` inlines these files, unchanged, in every report page (one \`<script>\` each,
in this order: vega, vega-lite, vega-embed), so that the page draws its charts with no network.
They are the packages' own minified browser builds (\`package/build/<name>.min.js\` in each npm
tarball), licensed BSD-3-Clause; each \`<name>.LICENSE\` is the package's LICENSE. The vega tarball
carries no LICENSE file: \`vega.LICENSE\` is the vega repository's (github.com/vega/vega, LICENSE).

The builds bundle other packages, listed below as their source maps (in the tarballs) name them, each
at the version the build holds (see THIRD_PARTY_NOTICES.md for how it is found, not what npm would
resolve today); THIRD_PARTY_NOTICES.md holds each one's licence text.

Written by \`scripts/update_report_vendor.sh\`; to refresh or move to other versions, edit the
versions pinned at its top and run it (it needs npm and the npm registry). Do not edit these files
by hand: tests/unit/test_html_report.py checks them against the digests below.

| package | version | tarball | tarball sha256 |
|---|---|---|---|
${rows}
| file | bytes | sha256 |
|---|---|---|
${files}
| bundled package | version | licence | bundled in |
|---|---|---|---|
${bundled}
EOF
echo "report_vendor: vega $VEGA, vega-lite $VEGA_LITE, vega-embed $VEGA_EMBED in $dest"
