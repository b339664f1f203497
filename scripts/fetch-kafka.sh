#!/usr/bin/env bash
# Fetch a genuine Apache Kafka broker (kafka_2.13 + runtime deps) from Maven Central into a
# cache dir OUTSIDE the work tree, for recstream/local_services.py (start_kafka) and CI.
#
#   scripts/fetch-kafka.sh            # prints the libs dir, e.g. ~/.cache/recstream/kafka-4.4.0/libs
#
# Idempotent: returns at once if the libs dir is already complete (marker file).
# Needs only Java + Maven (mvn) and access to Maven Central.
# Environment:
#   RECSTREAM_KAFKA_VERSION  Kafka version (default: <kafka.version> in scripts/kafka/pom.xml)
#   RECSTREAM_KAFKA_HOME     cache dir (default: $HOME/.cache/recstream/kafka-<version>); jars go to ./libs
#   MVN                      maven command (default: mvn)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/kafka/pom.xml"
marker_name=".fetch-complete"

default_version="$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$pom" | head -n1)"
version="${RECSTREAM_KAFKA_VERSION:-$default_version}"
[ -n "$version" ] || { echo "fetch-kafka: cannot determine the Kafka version from $pom" >&2; exit 1; }
kafka_home="${RECSTREAM_KAFKA_HOME:-$HOME/.cache/recstream/kafka-$version}"
libs="$kafka_home/libs"

if [ -f "$libs/$marker_name" ] && [ "$(cat "$libs/$marker_name")" = "$version" ]; then
  echo "$libs"
  exit 0
fi

command -v java >/dev/null || { echo "fetch-kafka: java not found (Java 17+ needed)" >&2; exit 1; }
mvn_cmd="${MVN:-mvn}"
command -v "$mvn_cmd" >/dev/null || { echo "fetch-kafka: $mvn_cmd (Maven) not found" >&2; exit 1; }

mkdir -p "$kafka_home"
tmp="$(mktemp -d "$kafka_home/libs.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-kafka: fetching org.apache.kafka:kafka_2.13:$version into $libs" >&2
start=$(date +%s)
"$mvn_cmd" -q -B -Dstyle.color=never -f "$pom" \
  -Dkafka.version="$version" \
  dependency:copy-dependencies -DoutputDirectory="$tmp" >&2

# Sanity check: the broker and storage-tool classes must be there.
ls "$tmp"/kafka_2.13-"$version".jar "$tmp"/kafka-clients-"$version".jar >/dev/null
echo "$version" > "$tmp/$marker_name"

rm -rf "$libs"
mv "$tmp" "$libs"
trap - EXIT
echo "fetch-kafka: $(ls "$libs" | wc -l) jars, $(du -sh "$libs" | cut -f1), in $(( $(date +%s) - start ))s" >&2
echo "$libs"
