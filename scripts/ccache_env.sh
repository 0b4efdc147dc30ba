# Sourced by the build scripts (build.sh, test_sanitize.sh, fuzz.sh), with $root set to the tree's
# root: ccache settings under which another checkout of the same sources hits what this one
# compiled (another clone, CI's fresh clone, the image's build stage at /src in deploy/Dockerfile).
# - Keys hold paths relative to the root, not absolute ones.
# - Not the locale (LANG and LC_*: it changes only the language of the compiler's messages; the
#   image's base sets none).
# - Not the working directory: with -g (the sanitizer and fuzz builds) ccache hashes it because the
#   debug info records it; CCACHE_NOHASHDIR leaves it out, so a hit's debug info names the folder
#   of the checkout that compiled it first (the sanitizers' stack traces name files relative to it).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:+$CCACHE_SLOPPINESS,}locale"
export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
