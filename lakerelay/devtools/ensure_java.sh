#!/usr/bin/env bash
# Spark needs Java 17 or newer. Install it with apt-get when we are root and it is missing; otherwise
# say exactly what to install.
set -euo pipefail

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

if command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null; then
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Java 17+ not found: installing openjdk-17-jre-headless with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi

cat >&2 <<'MSG'
lakerelay needs Java 17 or newer for Spark, and none was found on PATH.
Install it, then run this command again:
  Debian/Ubuntu:  sudo apt-get install openjdk-17-jre-headless
  macOS:          brew install openjdk@17
  or set JAVA_HOME to an existing JDK 17+ and put $JAVA_HOME/bin on PATH.
MSG
exit 1
