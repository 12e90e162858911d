# Shared by .ci/run and .ci/arm64-smoke.sh (sourced, run from the repository root).

# copy_checkout DEST: the checkout as a fresh `git clone` has it (tracked and new files, no ignored ones
# such as a developer's .venv or runs/), so README lines run there as on a new machine.
copy_checkout() {
    mkdir -p "$1"
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$1"
}

# readme_line N: the one line of the N-th ```bash block after "## Quick start" in README.md.
readme_line() {
    awk -v n="$1" '/^## Quick start/{q=1} q&&/^```bash/{k++; if(k==n){getline; print; exit}}' README.md
}
