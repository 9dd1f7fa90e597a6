#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft) on localhost, from the broker's jars on Maven Central.
# Usage: ops/kafka/kafka.sh fetch|start|stop|status|wait
# State lives under $MLRISK_HOME/kafka (default .mlrisk/kafka in the repository); nothing needs root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
home="${MLRISK_HOME:-$root/.mlrisk}/kafka"
libs="$home/libs"
data="$home/data"
conf="$home/server.properties"
pidfile="$home/kafka.pid"
log="$home/kafka.log"
port="${MLRISK_KAFKA_PORT:-9092}"
controller_port="${MLRISK_KAFKA_CONTROLLER_PORT:-9093}"

fetch() {
  if [[ -f "$libs/.complete" && "$libs/.complete" -nt "$here/pom.xml" ]]; then
    return 0
  fi
  echo "kafka: resolving the broker's jars from Maven Central"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$libs/.complete"
}

write_config() {
  mkdir -p "$home"
  cat >"$conf" <<CONF
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller_port}
advertised.listeners=PLAINTEXT://localhost:${port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:${controller_port}
log.dirs=${data}
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
log.segment.bytes=104857600
CONF
  cat >"$home/log4j2.yaml" <<'CONF'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
CONF
}

java_run() {
  java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$home/log4j2.yaml" \
    -cp "$libs/*" "$@"
}

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  # The broker answers when a TCP connection to the client port succeeds.
  (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null
}

wait_ready() {
  local deadline=$((SECONDS + ${1:-60}))
  until answers; do
    if ! running; then
      echo "kafka: the broker exited; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "kafka: no answer on localhost:${port} in time; see $log" >&2
      return 1
    fi
    sleep 0.5
  done
}

start() {
  if running; then
    echo "kafka: already running (pid $(cat "$pidfile")) on localhost:${port}"
    return 0
  fi
  if answers; then
    echo "kafka: something else already answers on localhost:${port}; using it"
    return 0
  fi
  fetch
  write_config
  if [[ ! -f "$data/meta.properties" ]]; then
    mkdir -p "$data"
    local cluster_id
    cluster_id="$(java_run kafka.tools.StorageTool random-uuid | tail -n 1)"
    java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$conf" --standalone >/dev/null
  fi
  echo "kafka: starting on localhost:${port} (log: $log)"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$home/log4j2.yaml" \
    -cp "$libs/*" kafka.Kafka "$conf" >"$log" 2>&1 &
  echo $! >"$pidfile"
  wait_ready 90
  echo "kafka: ready"
}

stop() {
  if ! running; then
    rm -f "$pidfile"
    echo "kafka: not running"
    return 0
  fi
  local pid
  pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka: broker did not stop in 30 s; killing it"
    kill -9 "$pid" || true
  fi
  rm -f "$pidfile"
  echo "kafka: stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  wait) wait_ready "${2:-60}" ;;
  status) if running; then echo "kafka: running (pid $(cat "$pidfile"))"; else echo "kafka: stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status|wait" >&2; exit 2 ;;
esac
