#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft) on localhost, from the broker's jars on Maven Central.
# Usage: ops/kafka/kafka.sh fetch|start|stop|status|wait
#        ops/kafka/kafka.sh start-secure|stop-secure|status-secure   (a second, secured broker: see secure_start)
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

# The brokers' log configuration: warnings, and the server's start and stop.
write_log_config() {
  cat >"$1" <<'CONF'
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
auto.create.topics.enable=${MLRISK_KAFKA_AUTO_CREATE_TOPICS:-true}
log.retention.hours=168
log.segment.bytes=104857600
CONF
  write_log_config "$home/log4j2.yaml"
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

# The secured broker: a second single-node KRaft broker beside the plain one, on other ports and its own state
# under $MLRISK_KAFKA_SECURE_HOME (default $MLRISK_HOME/kafka-secure). Each start generates a throwaway CA, certificates and passwords (never committed)
# and a fresh cluster:
#   SASL_SSL  localhost:$MLRISK_KAFKA_SECURE_PORT (9094)  SCRAM-SHA-512 users admin, worker, subscriber
#   SSL       localhost:port+1                              mutual TLS: the client certificate's CN is the user
#   CONTROLLER 127.0.0.1:port+2                             mutual TLS, the broker's own certificate
# The standard authorizer denies what no ACL allows; admin and the broker are super users; the ACLs
# (SecureAcls.java) cover the topics of MLRISK_TOPIC_PREFIX and MLRISK_APP_ID (default mlrisk).
# Clients find what they need there: tls/ca.pem, tls/{worker,subscriber}.{pem,key},
# secrets/{admin,worker,subscriber}.password, admin.properties (a Java client's settings for admin).
secure_home="${MLRISK_KAFKA_SECURE_HOME:-${MLRISK_HOME:-$root/.mlrisk}/kafka-secure}"
secure_port="${MLRISK_KAFKA_SECURE_PORT:-9094}"
secure_users=(admin worker subscriber)

secure_running() {
  [[ -f "$secure_home/kafka.pid" ]] && kill -0 "$(cat "$secure_home/kafka.pid")" 2>/dev/null
}

secure_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/${secure_port}") 2>/dev/null
}

secure_certificates() {
  local tls="$secure_home/tls"
  mkdir -p "$tls"
  chmod 700 "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mlrisk-throwaway-ca" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$tls/ext.cnf"
  local name
  for name in broker worker subscriber; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$tls/$name.key" -out "$tls/$name.csr" 2>/dev/null
    openssl x509 -req -in "$tls/$name.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 2 \
      -extfile "$tls/ext.cnf" -out "$tls/$name.pem" 2>/dev/null
  done
  # Kafka's PEM key store: the private key (PKCS#8, unencrypted) and then the certificate
  cat "$tls/broker.key" "$tls/broker.pem" >"$tls/broker-keystore.pem"
  rm -f "$tls"/*.csr "$tls/ext.cnf" "$tls/ca.srl"
  chmod 600 "$tls"/*
}

secure_config() {
  local tls="$secure_home/tls"
  cat >"$secure_home/server.properties" <<CONF
process.roles=broker,controller
node.id=1
listeners=SASL_SSL://127.0.0.1:${secure_port},MTLS://127.0.0.1:$((secure_port + 1)),CONTROLLER://127.0.0.1:$((secure_port + 2))
advertised.listeners=SASL_SSL://localhost:${secure_port},MTLS://localhost:$((secure_port + 1))
listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=MTLS
controller.quorum.bootstrap.servers=127.0.0.1:$((secure_port + 2))
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.mtls.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=${tls}/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=${tls}/ca.pem
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:broker
allow.everyone.if.no.acl.found=false
log.dirs=${secure_home}/data
num.partitions=4
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
CONF
  cat >"$secure_home/admin.properties" <<CONF
bootstrap.servers=localhost:${secure_port}
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$secure_home/secrets/admin.password")";
ssl.truststore.type=PEM
ssl.truststore.location=${tls}/ca.pem
CONF
  chmod 600 "$secure_home/admin.properties"
  write_log_config "$secure_home/log4j2.yaml"
}

secure_start() {
  if secure_running; then
    echo "kafka-secure: already running (pid $(cat "$secure_home/kafka.pid")) on localhost:${secure_port}"
    return 0
  fi
  if secure_answers; then
    echo "kafka-secure: something else answers on localhost:${secure_port}; not starting" >&2
    return 1
  fi
  fetch
  rm -rf "$secure_home"
  mkdir -p "$secure_home/secrets" "$secure_home/data"
  chmod 700 "$secure_home" "$secure_home/secrets"
  local user scram=()
  for user in "${secure_users[@]}"; do
    (umask 077 && openssl rand -hex 24 >"$secure_home/secrets/$user.password")
    scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(cat "$secure_home/secrets/$user.password")]")
  done
  secure_certificates
  secure_config
  local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$secure_home/log4j2.yaml")
  local cluster_id
  cluster_id="$(java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool random-uuid | tail -n 1)"
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$secure_home/server.properties" --standalone "${scram[@]}" >/dev/null
  echo "kafka-secure: starting on localhost:${secure_port} (log: $secure_home/kafka.log)"
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$secure_home/server.properties" \
    >"$secure_home/kafka.log" 2>&1 &
  echo $! >"$secure_home/kafka.pid"
  local deadline=$((SECONDS + 90))
  until secure_answers; do
    if ! secure_running || ((SECONDS > deadline)); then
      echo "kafka-secure: the broker did not come up; last lines of $secure_home/kafka.log:" >&2
      tail -n 30 "$secure_home/kafka.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  java "${java_opts[@]}" -cp "$libs/*" "$here/SecureAcls.java" "$secure_home/admin.properties" \
    "${MLRISK_TOPIC_PREFIX:-}" "${MLRISK_APP_ID:-mlrisk}"
  echo "kafka-secure: ready"
}

secure_stop() {
  if ! secure_running; then
    echo "kafka-secure: not running"
    return 0
  fi
  local pid
  pid="$(cat "$secure_home/kafka.pid")"
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" || true
  fi
  rm -f "$secure_home/kafka.pid"
  echo "kafka-secure: stopped"
}

case "${1:-}" in
  start-secure) secure_start ;;
  stop-secure) secure_stop ;;
  status-secure) if secure_running; then echo "kafka-secure: running"; else echo "kafka-secure: stopped"; exit 1; fi ;;
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  wait) wait_ready "${2:-60}" ;;
  status) if running; then echo "kafka: running (pid $(cat "$pidfile"))"; else echo "kafka: stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status|wait|start-secure|stop-secure|status-secure" >&2; exit 2 ;;
esac
