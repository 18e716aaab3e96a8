#!/bin/sh
# The build step of the WAR example: runs in the toolchain image with the checkout at /app
# (read-write), and writes the site the run step serves. A failing build (exit non-zero) keeps
# the previous version serving.
set -eu
mkdir -p out
version=$(cat VERSION)
sed "s/@VERSION@/$version/g" index.html.in > out/index.html
echo "built version $version"
