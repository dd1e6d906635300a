# One corner of the 3-environment triangle in shared/CONFIG.md.

instance {
  id            = "azure-1"
  cluster_group = "azure-1"
  tags          = ["azure"]
  data_dir      = "data/azure-1"
}

admin {
  listen = "127.0.0.1:8102"
}

source "websocket_server" "ingress" {
  listen = "127.0.0.1:7102"
  path   = "/ws"
}

source "websocket_client" "peers" {
  peer "aws-1" {
    url  = "ws://127.0.0.1:7101/ws"
    tags = ["aws"]
  }
  peer "gcp-1" {
    url  = "ws://127.0.0.1:7103/ws"
    tags = ["gcp"]
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
  stage "fanout" {}

  sinks = [sink.websocket.links]
}

sink "websocket" "links" {
  ack_timeout  = "10s"
  max_attempts = 3
}
