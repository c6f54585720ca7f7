#!/usr/bin/env bash
# ci/stage.sh STAGE — the work of one imagectl CI stage, for GitLab CI and GitHub Actions alike.
#
# The templates (ci/gitlab/imagectl.gitlab-ci.yml, ci/github/) only route jobs and carry artefacts; everything a
# stage does is here, so the two systems cannot drift apart. Stages, in pipeline order:
#
#   validate   imagectl recipe validate $IMAGECTL_RECIPES
#   plan       imagectl plan $IMAGECTL_RECIPES --json -> $IMAGECTL_OUT/plan.json (entries kept by $IMAGECTL_JOBS),
#              the GitLab child pipeline images.gitlab-ci.yml and the GitHub matrix matrix.json (also written to
#              $GITHUB_OUTPUT as `matrix` and `count` when that is set)
#   build      one plan entry ($IMAGECTL_JOB): skipped, and says so, when its build key is in the build cache
#              (IMAGECTL_CACHE_DIR) unless IMAGECTL_REBUILD=1; else imagectl build -> $IMAGECTL_OUT/build/JOB/
#   test       imagectl test IMAGE --record: boot result into the build record, console log in $IMAGECTL_OUT/boot/
#   publish    imagectl publish --from-build $IMAGECTL_OUT/build/JOB --channel $IMAGECTL_CHANNEL (keys needed)
#   promote    imagectl promote NAME:VERSION $IMAGECTL_PROMOTE_CHANNEL for what publish published (keys needed):
#              for $IMAGECTL_JOB, or, with IMAGECTL_JOB unset, for every $IMAGECTL_OUT/jobs/JOB.publish.json
#   refresh    imagectl catalogue verify; the browse site in $IMAGECTL_SITE, the simplestreams export in
#              $IMAGECTL_EXPORT_SIMPLESTREAMS and the HEPiX list in $IMAGECTL_EXPORT_HEPIX, each when set (no keys)
#
# Inputs (environment; IMAGECTL_CATALOGUE and IMAGECTL_CACHE_DIR are imagectl's own settings, see README):
#   IMAGECTL_RECIPES          recipe paths or shell patterns, space-separated (default "recipes/*.yaml recipes/*/*.yaml")
#   IMAGECTL_JOBS             plan: keep only entries whose job id matches one of these shell patterns (default "*")
#   IMAGECTL_RUNNER_ARCHES    plan (GitLab): arches the project has runners for (default "x86_64 i386"); a build
#                             for another arch is generated as a manual job that waits for such a runner
#   IMAGECTL_JOB              build/test/publish/promote: the plan entry's job id, e.g. debian12-demo-x86_64-hvm
#   IMAGECTL_RECIPE, IMAGECTL_ARCH   build: the entry's recipe and arch (the child pipeline sets them; else plan.json)
#   IMAGECTL_HYPERVISOR       test: the entry's hypervisor (xen-pv: booted through pygrub, when installed)
#   IMAGECTL_REBUILD          build: 1 builds even when the build key is cached
#   IMAGECTL_CACHED           build: what a cached build key means: skip (default: build, test, publish and promote
#                             skip) or reuse (imagectl build copies the cached image out; the later stages run)
#   IMAGECTL_BOOT_TIMEOUT     test: seconds to wait for the login prompt (default 900)
#   IMAGECTL_CHANNEL          publish: channel to move (default testing)
#   IMAGECTL_PROMOTE_CHANNEL  promote: channel to move (default stable)
#   IMAGECTL_KEYS_FILE        publish/promote: the signing keys, as the CI system hands them over: a file holding
#                             `tar -C KEYDIR -czf - . | base64 -w0` (a GitLab file variable), the tar.gz itself,
#                             or a directory of *.key files. Every other stage deletes such a file (the job's own
#                             copy of a CI file variable; a directory is left alone) and unsets the variable.
#   IMAGECTL_KEYS_TARBALL     publish/promote: the same base64 text in the variable itself (a GitHub secret), used
#                             when IMAGECTL_KEYS_FILE is unset; unset by every stage before imagectl runs
#   IMAGECTL_ENVIRONMENT      plan (GitLab): child publish and promote jobs run in the environments
#                             ENV/CHANNEL, e.g. catalogue/testing and catalogue/stable (default catalogue), so the
#                             key file variable can be scoped to ENV/*
#   IMAGECTL_SITE             refresh: render the catalogue's browse site into this directory
#   IMAGECTL_EXPORT_SIMPLESTREAMS  refresh: imagectl export simplestreams into this directory (streams/v1/;
#                             IMAGECTL_GPG_KEY clearsigns it, IMAGECTL_PUBLIC_URL sets the download URLs)
#   IMAGECTL_EXPORT_HEPIX     refresh: imagectl export hepix into this file; needs IMAGECTL_HEPIX_CERT and
#                             IMAGECTL_HEPIX_KEY (PEM files: the list's S/MIME signer); IMAGECTL_HEPIX_LIST_URL is
#                             where the list will be published (default: beside the catalogue)
#   IMAGECTL_OUT              where artefacts go (default imagectl-out): plan.json, images.gitlab-ci.yml,
#                             matrix.json, build/JOB/ (images and build records), boot/JOB.console.log,
#                             jobs/JOB.*.json (what each stage's imagectl printed), jobs/JOB.cached (build skipped)
#   IMAGECTL_CI_DIR           where this script lives, as the generated child pipeline calls it (default: here)
#   IMAGECTL_CMD              how to run imagectl (default "imagectl"; e.g. "python3 -m imagectl")
#   IMAGECTL_PYTHON           the Python that reads plan JSON (default python3)
#
# Signing keys exist only in publish and promote: unpacked into a private 0700 directory that an EXIT trap
# removes; nothing here prints them, and this script never runs with `set -x`. Every other stage first deletes a
# key file the CI system handed over and unsets the key variables, before any recipe code or imagectl runs.
set -euo pipefail
set +x  # a caller's `bash -x` must not trace key handling

STAGE=${1:-}
OUT=${IMAGECTL_OUT:-imagectl-out}
CI_DIR=${IMAGECTL_CI_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
PY=${IMAGECTL_PYTHON:-python3}
read -r -a IMAGECTL <<<"${IMAGECTL_CMD:-imagectl}"
KEYS_TMP=""

say() { printf 'imagectl-ci: %s\n' "$*"; }
die() {
	printf 'imagectl-ci: error: %s\n' "$*" >&2
	exit 1
}
need() { [ -n "${!1:-}" ] || die "$STAGE needs $1 (see ci/README.md)"; }
run() {
	printf '+ %s\n' "${IMAGECTL[*]} $*" >&2
	"${IMAGECTL[@]}" "$@"
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	if [ -n "$KEYS_TMP" ]; then rm -rf -- "$KEYS_TMP"; fi
}
trap cleanup EXIT

# The recipes as arguments: each pattern expanded against the checkout, a pattern matching nothing kept as
# written (a shipped recipe's name, or a path imagectl then reports as missing).
recipes() {
	local p
	local -a pats
	read -r -a pats <<<"${IMAGECTL_RECIPES:-recipes/*.yaml recipes/*/*.yaml}"
	RECIPES=()
	for p in "${pats[@]}"; do
		if compgen -G "$p" >/dev/null; then
			while IFS= read -r f; do RECIPES+=("$f"); done < <(compgen -G "$p" | sort)
		else
			RECIPES+=("$p")
		fi
	done
}

# Stages that sign nothing get no keys: a key file the CI system handed over (a GitLab file variable that is
# not scoped to the publish/promote environments) is deleted, and the key variables are unset, before any
# imagectl or recipe code (diskimage-builder runs recipe code as root) starts. One line says so; no key material
# and no path is printed. A directory of keys is a runner's own: it is left in place, only the variable goes.
drop_keys() {
	local f=${IMAGECTL_KEYS_FILE:-} what="no signing keys in this job"
	if [ -n "$f" ] && { [ -f "$f" ] || [ -L "$f" ]; }; then
		rm -f -- "$f"
		what="removed the signing key file from this job and unset its variable"
	elif [ -n "$f" ] && [ -d "$f" ]; then
		what="unset the signing key variable (it names a directory, left in place)"
	elif [ -n "$f" ] || [ -n "${IMAGECTL_KEYS_TARBALL:-}" ] || [ -n "${IMAGECTL_KEYS:-}" ]; then
		what="unset the signing key variables"
	fi
	unset IMAGECTL_KEYS_FILE IMAGECTL_KEYS_TARBALL IMAGECTL_KEYS
	say "$STAGE: $what (keys belong to publish and promote only)"
}

# The signing keys, unpacked into a private directory; exports IMAGECTL_KEYS (imagectl's setting). From the file
# IMAGECTL_KEYS_FILE names, else from the base64 text in IMAGECTL_KEYS_TARBALL (a GitHub secret), which is unset.
unpack_keys() {
	local src=${IMAGECTL_KEYS_FILE:-} magic
	umask 077
	if [ -z "$src" ]; then
		[ -n "${IMAGECTL_KEYS_TARBALL:-}" ] || die "$STAGE needs IMAGECTL_KEYS_FILE or IMAGECTL_KEYS_TARBALL (see ci/README.md)"
		KEYS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/imagectl-keys.XXXXXX") # mode 0700
		printf '%s' "$IMAGECTL_KEYS_TARBALL" | base64 -d 2>/dev/null |
			tar -xzf - -C "$KEYS_TMP" --no-same-owner --no-same-permissions 2>/dev/null ||
			die "IMAGECTL_KEYS_TARBALL is not base64 of a tar.gz (make it with: tar -C KEYDIR -czf - . | base64 -w0)"
		unset IMAGECTL_KEYS_TARBALL
		check_keys
		return 0
	fi
	unset IMAGECTL_KEYS_TARBALL
	KEYS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/imagectl-keys.XXXXXX") # mode 0700
	if [ -d "$src" ]; then
		cp -- "$src"/*.key "$KEYS_TMP"/ 2>/dev/null || die "IMAGECTL_KEYS_FILE names a directory without *.key files"
	elif [ -f "$src" ]; then
		magic=$(head -c 2 -- "$src" | od -An -tx1 | tr -d ' \n')
		if [ "$magic" = "1f8b" ]; then
			tar -xzf "$src" -C "$KEYS_TMP" --no-same-owner --no-same-permissions ||
				die "IMAGECTL_KEYS_FILE is not a readable tar.gz of the key directory"
		else
			base64 -d <"$src" 2>/dev/null | tar -xzf - -C "$KEYS_TMP" --no-same-owner --no-same-permissions 2>/dev/null ||
				die "IMAGECTL_KEYS_FILE is neither a tar.gz nor base64 of one (make it with: tar -C KEYDIR -czf - . | base64 -w0)"
		fi
	else
		die "IMAGECTL_KEYS_FILE does not name a file or directory"
	fi
	check_keys
}

check_keys() {
	# Only plain key files at the top: a symlink or device planted in the tarball is refused, not followed.
	if [ -n "$(find "$KEYS_TMP" -mindepth 1 ! -type d ! -type f -print -quit)" ]; then
		die "the key tarball holds something other than plain files"
	fi
	compgen -G "$KEYS_TMP/*.key" >/dev/null || die "no *.key file at the top of IMAGECTL_KEYS_FILE"
	chmod 600 "$KEYS_TMP"/*.key
	export IMAGECTL_KEYS=$KEYS_TMP
}

# Read fields of one plan entry: `entry FILE JOB` prints recipe, arch, hypervisor, name, build_key, cached,
# buildable_here, why and the runner tags (comma-separated) on one line, separated by US (0x1f): a tab is
# whitespace to `read`, and empty fields must not collapse.
entry() {
	"$PY" - "$1" "$2" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for e in doc["entries"]:
    if e["job"] == sys.argv[2]:
        r = e.get("runner", {})
        fields = [e["recipe"], e["arch"], e["hypervisor"], e["name"], e["build_key"], str(bool(e["cached"])).lower(),
                  str(bool(r.get("buildable_here", True))).lower(), r.get("why", ""), ",".join(r.get("tags", []))]
        print("\x1f".join(f.replace("\x1f", " ").replace("\n", " ") for f in fields))
        sys.exit(0)
sys.exit(f"imagectl-ci: error: no plan entry {sys.argv[2]!r} in {sys.argv[1]}")
PY
}

stage_validate() {
	recipes
	run recipe validate "${RECIPES[@]}"
}

stage_plan() {
	recipes
	mkdir -p "$OUT"
	run plan "${RECIPES[@]}" --json >"$OUT/plan.all.json"
	"$PY" - "$OUT" "$CI_DIR" <<'PY'
import fnmatch, json, os, sys

out, ci_dir = sys.argv[1], sys.argv[2]
plan = json.load(open(os.path.join(out, "plan.all.json")))
pats = os.environ.get("IMAGECTL_JOBS", "*").split() or ["*"]
entries = [e for e in plan["entries"] if any(fnmatch.fnmatchcase(e["job"], p) for p in pats)]
with open(os.path.join(out, "plan.json"), "w") as f:
    json.dump({**plan, "entries": entries}, f, indent=2)
have = set(os.environ.get("IMAGECTL_RUNNER_ARCHES", "x86_64 i386").split())
# Publish and promote run in environments ENV/CHANNEL (catalogue/testing, catalogue/stable), so a GitLab file
# variable holding the signing keys can be scoped to ENV/* and reaches no other job.
env_prefix = os.environ.get("IMAGECTL_ENVIRONMENT") or "catalogue"

def environment(channel):
    return "".join(c if c.isalnum() or c in "-_/" else "-" for c in f"{env_prefix}/{channel}")

environments = {"publish": environment(os.environ.get("IMAGECTL_CHANNEL") or "testing"),
                "promote": environment(os.environ.get("IMAGECTL_PROMOTE_CHANNEL") or "stable")}

def q(s):  # a YAML double-quoted scalar (JSON strings are valid YAML)
    return json.dumps(str(s))

ci = os.environ.get("IMAGECTL_CI_DIR_IN_JOB", ci_dir)
fetch = ('[ -f "$IMAGECTL_CI_DIR/stage.sh" ] || git clone --quiet --depth 1 --branch "$IMAGECTL_REF" '
         '"$IMAGECTL_SOURCE" .imagectl')
y = ["# Generated by ci/stage.sh plan from plan.json: one build -> test -> publish -> promote chain per entry.",
     "# (Job names use '-', not ':': gitlab-ci-local 4.72 loses artefacts of jobs whose names hold a colon.)",
     "stages: [build, test, publish, promote]", "variables:", f"  IMAGECTL_CI_DIR: {q(ci)}",
     "default:", "  before_script:", f"    - {q(fetch)}", "workflow:", "  rules:", "    - when: always", ""]
if not entries:
    y += ["imagectl-nothing-to-build:", "  stage: build", "  tags: [imagectl]",
          "  script: ['echo \"imagectl-ci: the plan has no entries\"']"]
for e in entries:
    job, r = e["job"], e["runner"]
    tags = "[" + ", ".join(q(t) for t in r["tags"]) + "]"
    waiting = r["arch"] not in have
    where = f"a runner tagged {', '.join(r['tags'])}"
    art = (f"  artifacts:\n    when: always\n    expire_in: 1 week\n    paths:\n"
           f"      - {q(os.path.join(out, 'build', job) + '/')}\n      - {q(os.path.join(out, 'boot') + '/')}\n"
           f"      - {q(os.path.join(out, 'jobs') + '/')}")
    common = f"  tags: {tags}\n  variables:\n    IMAGECTL_JOB: {q(job)}\n    IMAGECTL_HYPERVISOR: {q(e['hypervisor'])}\n"
    # No runner declared for this arch: the chain waits, as manual jobs tagged for such a runner (never run on a
    # host that cannot build it), and a notice job says so with a warning, not a failure. Once the runner is
    # registered, add its arch to IMAGECTL_RUNNER_ARCHES and the chain runs by itself.
    wait = ["  when: manual", "  allow_failure: true"] if waiting else []
    if waiting:
        msg = f"imagectl-ci: {job} is waiting for {where}; none is declared in IMAGECTL_RUNNER_ARCHES"
        y += [f"waiting-{job}:", "  stage: build", "  tags: [imagectl]", "  allow_failure:", "    exit_codes: [3]",
              f"  script: [{q('echo ' + json.dumps(msg))}, 'exit 3']"]
    y += [f"build-{job}:", "  stage: build", common + f"    IMAGECTL_RECIPE: {q(e['recipe'])}",
          f"    IMAGECTL_ARCH: {q(e['arch'])}", f"    IMAGECTL_BUILD_KEY: {q(e['build_key'])}"]
    y += [*wait, "  script: ['bash \"$IMAGECTL_CI_DIR/stage.sh\" build']", art]
    prev = f"build-{job}"
    for stage in ("test", "publish"):
        y += [f"{stage}-{job}:", f"  stage: {stage}", common.rstrip("\n"), f"  needs: [{q(prev)}]",
              f"  script: ['bash \"$IMAGECTL_CI_DIR/stage.sh\" {stage}']"]
        if stage == "publish":
            y += [f"  environment: {{name: {q(environments['publish'])}}}",
                  "  rules:", "    - if: $IMAGECTL_CATALOGUE", *("    " + w for w in wait), "    - when: never"]
        else:
            y += wait
        y += [art]
        prev = f"{stage}-{job}"
    y += [f"promote-{job}:", "  stage: promote", common.rstrip("\n"), f"  needs: [{q(prev)}]",
          "  script: ['bash \"$IMAGECTL_CI_DIR/stage.sh\" promote']",
          f"  environment: {{name: {q(environments['promote'])}}}",
          "  rules:",
          '    - if: $IMAGECTL_CATALOGUE && $CI_COMMIT_REF_PROTECTED == "true"',
          "      when: manual", "      allow_failure: true", "    - when: never",
          f"  artifacts:\n    paths:\n      - {q(os.path.join(out, 'jobs') + '/')}"]
    print(f"imagectl-ci: {job}: runner tags {','.join(r['tags'])}; "
          + ("build key cached, the build will be skipped" if e["cached"] else "will be built")
          + (f"; waiting for {where} (none declared in IMAGECTL_RUNNER_ARCHES)" if waiting else ""))
with open(os.path.join(out, "images.gitlab-ci.yml"), "w") as f:
    f.write("\n".join(y) + "\n")
# GitHub: the whole matrix, and one per runner kind (x86 hosts; Itanium hosts), so that the x86 images' promote
# and refresh jobs need only the x86 image jobs and never wait for an ia64 job queued for an Itanium runner.
def row(e):
    return {"job": e["job"], "recipe": e["recipe"], "arch": e["arch"], "hypervisor": e["hypervisor"],
            "build_key": e["build_key"], "runs-on": ["self-hosted", *e["runner"]["tags"]]}

def kind(e):
    return "itanium" if e["runner"]["arch"] == "ia64" else "x86"

matrix = {"include": [row(e) for e in entries]}
kinds = {k: {"include": [row(e) for e in entries if kind(e) == k]} for k in ("x86", "itanium")}
with open(os.path.join(out, "matrix.json"), "w") as f:
    json.dump({**matrix, "by_runner": kinds}, f)
if os.environ.get("GITHUB_OUTPUT"):
    with open(os.environ["GITHUB_OUTPUT"], "a") as f:
        f.write(f"matrix={json.dumps(matrix)}\ncount={len(entries)}\n")
        for k, m in kinds.items():
            f.write(f"matrix_{k}={json.dumps(m)}\ncount_{k}={len(m['include'])}\n")
print(f"imagectl-ci: plan: {len(entries)} of {len(plan['entries'])} entries kept (IMAGECTL_JOBS={' '.join(pats)})")
PY
}

# The plan entry of $IMAGECTL_JOB as this runner sees it (its cache, its arch): the child pipeline hands over
# recipe and arch; otherwise they come from the plan stage's plan.json.
this_entry() {
	need IMAGECTL_JOB
	local recipe=${IMAGECTL_RECIPE:-} arch=${IMAGECTL_ARCH:-} line
	if [ -z "$recipe" ] || [ -z "$arch" ]; then
		[ -f "$OUT/plan.json" ] || die "build needs IMAGECTL_RECIPE and IMAGECTL_ARCH, or the plan stage's $OUT/plan.json"
		line=$(entry "$OUT/plan.json" "$IMAGECTL_JOB")
		IFS=$'\x1f' read -r recipe arch _ <<<"$line"
	fi
	mkdir -p "$OUT/jobs"
	run plan "$recipe" --arch "$arch" --json >"$OUT/jobs/$IMAGECTL_JOB.plan.json"
	line=$(entry "$OUT/jobs/$IMAGECTL_JOB.plan.json" "$IMAGECTL_JOB")
	IFS=$'\x1f' read -r E_RECIPE E_ARCH E_HV _ E_KEY E_CACHED E_BUILDABLE E_WHY E_TAGS <<<"$line"
}

stage_build() {
	this_entry
	local dest="$OUT/build/$IMAGECTL_JOB"
	if [ "$E_BUILDABLE" != "true" ]; then
		die "$IMAGECTL_JOB cannot be built on this host: $E_WHY (it belongs on a runner tagged $E_TAGS)"
	fi
	if [ "$E_CACHED" = "true" ] && [ "${IMAGECTL_REBUILD:-0}" != "1" ] && [ "${IMAGECTL_CACHED:-skip}" = "skip" ]; then
		say "$IMAGECTL_JOB: build key $E_KEY is cached: skipping the build (an earlier pipeline built exactly these" \
			"inputs; test, publish and promote skip too; IMAGECTL_REBUILD=1 builds anyway)"
		printf '%s\n' "$E_KEY" >"$OUT/jobs/$IMAGECTL_JOB.cached"
		return 0
	fi
	rm -f -- "$OUT/jobs/$IMAGECTL_JOB.cached"
	local -a hv=()
	if "${IMAGECTL[@]}" build --help 2>/dev/null | grep -q -- '--hypervisor'; then hv=(--hypervisor "$E_HV"); fi
	local -a rebuild=()
	if [ "${IMAGECTL_REBUILD:-0}" = "1" ]; then rebuild=(--rebuild); fi
	if [ "$E_CACHED" = "true" ] && [ "${IMAGECTL_REBUILD:-0}" != "1" ]; then
		say "$IMAGECTL_JOB: build key $E_KEY is cached: reusing the cached image (IMAGECTL_CACHED=reuse)"
	else
		say "$IMAGECTL_JOB: building $E_RECIPE for $E_ARCH ($E_HV), build key $E_KEY"
	fi
	run build "$E_RECIPE" --arch "$E_ARCH" "${hv[@]}" "${rebuild[@]}" -o "$dest" --json >"$OUT/jobs/$IMAGECTL_JOB.build.json"
	say "$IMAGECTL_JOB: built into $dest"
}

# True (and says so) when the build stage skipped this job because its build key was cached.
skipped() {
	need IMAGECTL_JOB
	if [ -f "$OUT/jobs/$IMAGECTL_JOB.cached" ]; then
		say "$IMAGECTL_JOB: build key $(cat "$OUT/jobs/$IMAGECTL_JOB.cached") was cached and not rebuilt: nothing new to $STAGE"
		return 0
	fi
	return 1
}

stage_test() {
	if skipped; then return 0; fi
	# A xen-pv image boots through Xen's pygrub (imagectl test reads the hypervisor from the build record).
	if [ "${IMAGECTL_HYPERVISOR:-hvm}" = "xen-pv" ] && ! command -v pygrub >/dev/null &&
		! compgen -G '/usr/lib/xen-*/bin/pygrub' >/dev/null; then
		say "$IMAGECTL_JOB: no boot test here: a xen-pv image is booted through Xen's pygrub, which this runner" \
			"lacks (apt-get install xen-utils-4.17; a protected channel will refuse the image)"
		return 0
	fi
	local image
	image=$("$PY" - "$OUT/jobs/$IMAGECTL_JOB.build.json" "$IMAGECTL_JOB" <<'PY'
import json, sys
outs = json.load(open(sys.argv[1]))
images = [i for o in outs for i in o["images"] if sys.argv[2].startswith(o["name"] + "-" + o["arch"])]
images = images or [i for o in outs for i in o["images"]]
if not images:
    sys.exit(f"imagectl-ci: error: the build of {sys.argv[2]} left no image")
print(sorted(images, key=lambda i: not i.endswith(".qcow2"))[0])
PY
	)
	local arch
	arch=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["arch"])' "$OUT/jobs/$IMAGECTL_JOB.build.json")
	mkdir -p "$OUT/boot"
	say "$IMAGECTL_JOB: boot test of $image (console log $OUT/boot/$IMAGECTL_JOB.console.log)"
	local -a boot=(test "$image" --arch "$arch" --timeout "${IMAGECTL_BOOT_TIMEOUT:-900}"
		--log "$OUT/boot/$IMAGECTL_JOB.console.log" --json --record)
	local rc=0
	run "${boot[@]}" >"$OUT/jobs/$IMAGECTL_JOB.test.json" || rc=$?
	if [ "$rc" -eq 22 ] && [ "${IMAGECTL_HYPERVISOR:-hvm}" = "xen-pv" ]; then
		say "$IMAGECTL_JOB: no boot test here: its kernel boots only under Xen (a protected channel will refuse it)"
		return 0
	fi
	[ "$rc" -eq 0 ] || return "$rc"
	say "$IMAGECTL_JOB: booted to its login prompt; the result is in the build record"
}

stage_publish() {
	if skipped; then return 0; fi
	need IMAGECTL_CATALOGUE
	unpack_keys
	mkdir -p "$OUT/jobs"
	run publish --from-build "$OUT/build/$IMAGECTL_JOB" --channel "${IMAGECTL_CHANNEL:-testing}" \
		--json >"$OUT/jobs/$IMAGECTL_JOB.publish.json"
	"$PY" - "$OUT/jobs/$IMAGECTL_JOB.publish.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"imagectl-ci: {'published' if r.get('created') else 'already published'}: "
          f"{r['name']}:{r['version']} {r['arch']} sha256:{r.get('sha256', '?')}")
PY
}

# promote for one job: IMAGECTL_JOB; with it unset (GitHub's promote job, which gathers the image jobs'
# artefacts), every job whose publish stage left $OUT/jobs/JOB.publish.json. The keys are unpacked once.
stage_promote() {
	need IMAGECTL_CATALOGUE
	local -a jobs=()
	local published versions nv job
	if [ -n "${IMAGECTL_JOB:-}" ]; then
		if skipped; then return 0; fi
		published="$OUT/jobs/$IMAGECTL_JOB.publish.json"
		[ -f "$published" ] || die "nothing to promote: $published is missing (did publish run?)"
		jobs=("$IMAGECTL_JOB")
	else
		for published in "$OUT"/jobs/*.publish.json; do
			[ -f "$published" ] && jobs+=("$(basename "$published" .publish.json)")
		done
		if [ "${#jobs[@]}" -eq 0 ]; then
			say "nothing was published in this run ($OUT/jobs/*.publish.json): nothing to promote"
			return 0
		fi
	fi
	unpack_keys
	for job in "${jobs[@]}"; do
		published="$OUT/jobs/$job.publish.json"
		versions=$("$PY" -c 'import json,sys; print(" ".join(sorted({r["name"]+":"+r["version"] for r in json.load(open(sys.argv[1]))})))' "$published")
		[ -n "$versions" ] || die "nothing to promote: $published lists no image"
		for nv in $versions; do # NAME:VERSION has no spaces (imagectl's identifiers)
			run promote "$nv" "${IMAGECTL_PROMOTE_CHANNEL:-stable}" --json >>"$OUT/jobs/$job.promote.json"
			say "promoted $nv to ${IMAGECTL_PROMOTE_CHANNEL:-stable}"
		done
	done
}

stage_refresh() {
	need IMAGECTL_CATALOGUE
	run catalogue verify "$IMAGECTL_CATALOGUE"
	if [ -n "${IMAGECTL_SITE:-}" ]; then
		run catalogue site "$IMAGECTL_CATALOGUE" -o "$IMAGECTL_SITE"
		say "site rendered in $IMAGECTL_SITE"
	fi
	# The exports, when configured: imagectl reads IMAGECTL_GPG_KEY, IMAGECTL_PUBLIC_URL and IMAGECTL_HEPIX_CERT/KEY
	# from the environment itself.
	if [ -n "${IMAGECTL_EXPORT_SIMPLESTREAMS:-}" ]; then
		run export simplestreams "$IMAGECTL_CATALOGUE" -o "$IMAGECTL_EXPORT_SIMPLESTREAMS"
		say "simplestreams export refreshed in $IMAGECTL_EXPORT_SIMPLESTREAMS"
	fi
	if [ -n "${IMAGECTL_EXPORT_HEPIX:-}" ]; then
		if [ -z "${IMAGECTL_HEPIX_CERT:-}" ] || [ -z "${IMAGECTL_HEPIX_KEY:-}" ]; then
			die "IMAGECTL_EXPORT_HEPIX needs IMAGECTL_HEPIX_CERT and IMAGECTL_HEPIX_KEY (the list's signing certificate and key)"
		fi
		local -a url=()
		if [ -n "${IMAGECTL_HEPIX_LIST_URL:-}" ]; then url=(--list-url "$IMAGECTL_HEPIX_LIST_URL"); fi
		run export hepix "$IMAGECTL_CATALOGUE" -o "$IMAGECTL_EXPORT_HEPIX" "${url[@]}"
		say "HEPiX image list refreshed in $IMAGECTL_EXPORT_HEPIX"
	elif [ -n "${IMAGECTL_HEPIX_CERT:-}" ]; then
		say "IMAGECTL_HEPIX_CERT is set but IMAGECTL_EXPORT_HEPIX is not: no HEPiX list written"
	fi
}

main() {
	case "$STAGE" in
	publish | promote) ;;
	validate | plan | build | test | refresh) drop_keys ;;
	esac
	# The HEPiX signing key is refresh's alone; it is the runner's file, so it is only unset elsewhere.
	if [ "$STAGE" != refresh ]; then unset IMAGECTL_HEPIX_KEY; fi
	case "$STAGE" in
	validate) stage_validate ;;
	plan) stage_plan ;;
	build) stage_build ;;
	test) stage_test ;;
	publish) stage_publish ;;
	promote) stage_promote ;;
	refresh) stage_refresh ;;
	*) die "usage: ci/stage.sh validate|plan|build|test|publish|promote|refresh (got '${STAGE}')" ;;
	esac
}

# One line, so bash has read the whole script before running any of it (a checkout updated mid-job is harmless).
main; exit
