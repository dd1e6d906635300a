# Slipstream's default configuration, embedded in the binary: `slipstream run`
# with no flags serves one local instance. The surface is described in
# docs/config.md (`slipstream docs`).

instance {
  id            = env("SLIPSTREAM_INSTANCE_ID", "local-1")
  cluster_group = "singleton"
  tags          = ["local"]
  data_dir      = "data"
}

admin {
  listen = "127.0.0.1:9090"          # /metrics /healthz /readyz /v1/...
  # token = env("SLIPSTREAM_ADMIN_TOKEN")
}

log {
  level    = "info"                  # debug | info | warn | error
  format   = "json"                  # json | text
  messages = false                   # one line per message handled
}

tracing {
  exporter     = "none"              # none | otlp_http | otlp_grpc | stdout
  endpoint     = "127.0.0.1:4318"
  sample_ratio = 1.0
}

source "websocket_server" "ingress" {
  listen       = "127.0.0.1:7070"
  path         = "/ws"
  default_tags = ["local"]           # tags of inbound links that declare none
  # allow_commands = false
  # tls {
  #   cert_file      = "server.pem"
  #   key_file       = "server-key.pem"
  #   client_ca_file = "ca.pem"      # set: clients must present a certificate signed by it
  # }
}

source "websocket_client" "peers" {
  # peer "azure-1" {
  #   url   = "wss://azure.example.com:7070/ws"
  #   tags  = ["azure", "production"]
  #   token = env("AZURE_TOKEN")
  #   tls {
  #     ca_file     = "ca.pem"
  #     cert_file   = "me.pem"
  #     key_file    = "me-key.pem"
  #     server_name = "azure.example.com"
  #     insecure_skip_verify = false
  #   }
  # }
  retry {
    interval     = "5s"
    max_interval = "1m"
    attempts     = 10                # 0 = never give up; after the last, wait `cooldown` and start over
    cooldown     = "5m"
  }
  heartbeat {
    interval = "10s"
    timeout  = "30s"
  }
}

pipeline "sync" {
  sources = [source.websocket_server.ingress, source.websocket_client.peers]

  stage "decode" {}
  stage "loop_check" {}
  stage "dedup" {
    window = "24h"
  }
  stage "tag_filter" {}
  stage "persist" {}
  stage "ack" {}
  stage "state" {}
  stage "command" {}
  stage "fanout" {}

  sinks = [sink.websocket.links]
}

sink "websocket" "links" {
  ack_timeout  = "10s"
  max_attempts = 3
}
