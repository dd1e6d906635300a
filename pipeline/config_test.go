package pipeline

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	slipstream "github.com/slipstream-sync/slipstream"
)

// The real kinds register themselves in DefaultKinds from sources/, stages/
// and sinks/, which import this package. These tests load against their own
// registry of kinds that mirror shared/CONFIG.md.

type testServerTLS struct {
	CertFile     string `hcl:"cert_file,optional" doc:"server certificate (PEM)"`
	KeyFile      string `hcl:"key_file,optional" doc:"its key (PEM)"`
	ClientCAFile string `hcl:"client_ca_file,optional" doc:"set: clients must present a certificate signed by it"`
}

type testServerConfig struct {
	Listen        string         `hcl:"listen,optional" doc:"host:port to listen on"`
	Path          string         `hcl:"path,optional" doc:"HTTP path of the WebSocket endpoint"`
	DefaultTags   []string       `hcl:"default_tags,optional" doc:"tags of inbound links that declare none"`
	AllowCommands bool           `hcl:"allow_commands,optional" doc:"accept command frames from clients"`
	Tokens        []string       `hcl:"tokens,optional" doc:"bearer tokens accepted"`
	TLS           *testServerTLS `hcl:"tls,block" doc:"serve wss://"`
}

func (c *testServerConfig) Validate() error {
	if !strings.Contains(c.Listen, ":") {
		return &FieldError{Field: "listen", Err: fmt.Errorf("must be host:port, got %q", c.Listen)}
	}
	if c.TLS != nil && (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		if c.TLS.CertFile == "" {
			return &FieldError{Field: "tls.cert_file", Err: errors.New("must be set with key_file")}
		}
		return &FieldError{Field: "tls.key_file", Err: errors.New("must be set with cert_file")}
	}
	return nil
}

type testPeerTLS struct {
	CAFile             string `hcl:"ca_file,optional"`
	CertFile           string `hcl:"cert_file,optional"`
	KeyFile            string `hcl:"key_file,optional"`
	ServerName         string `hcl:"server_name,optional"`
	InsecureSkipVerify bool   `hcl:"insecure_skip_verify,optional"`
}

type testPeer struct {
	ID    string       `hcl:"id,label"`
	URL   string       `hcl:"url" doc:"ws:// or wss:// URL of the peer's websocket_server"`
	Tags  []string     `hcl:"tags,optional"`
	Token string       `hcl:"token,optional"`
	TLS   *testPeerTLS `hcl:"tls,block"`
}

func (p *testPeer) Validate() error {
	if !strings.HasPrefix(p.URL, "ws://") && !strings.HasPrefix(p.URL, "wss://") {
		return &FieldError{Field: "url", Err: fmt.Errorf("must be a ws:// or wss:// URL, got %q", p.URL)}
	}
	return nil
}

type testRetry struct {
	Interval    time.Duration `hcl:"interval,optional"`
	MaxInterval time.Duration `hcl:"max_interval,optional"`
	Attempts    int           `hcl:"attempts,optional" doc:"0 = never give up"`
	Cooldown    time.Duration `hcl:"cooldown,optional"`
}

type testHeartbeat struct {
	Interval time.Duration `hcl:"interval,optional"`
	Timeout  time.Duration `hcl:"timeout,optional"`
}

type testClientConfig struct {
	Peers     []testPeer    `hcl:"peer,block" doc:"a peer to dial"`
	Retry     testRetry     `hcl:"retry,block"`
	Heartbeat testHeartbeat `hcl:"heartbeat,block"`
}

func (c *testClientConfig) Validate() error {
	if c.Heartbeat.Timeout <= c.Heartbeat.Interval {
		return &FieldError{Field: "heartbeat.timeout", Err: errors.New("must be longer than heartbeat.interval")}
	}
	return nil
}

type testDedupConfig struct {
	Window   time.Duration `hcl:"window,optional" doc:"how long a message id is remembered"`
	Store    string        `hcl:"store,optional" doc:"badger | redis"`
	RedisURL string        `hcl:"redis_url,optional" doc:"the Redis of the cluster group (store = \"redis\")"`
}

func (c *testDedupConfig) Validate() error {
	switch {
	case c.Window <= 0:
		return &FieldError{Field: "window", Err: errors.New("must be positive")}
	case c.Store != "badger" && c.Store != "redis":
		return &FieldError{Field: "store", Err: fmt.Errorf("must be badger or redis, got %q", c.Store)}
	case c.Store == "redis" && c.RedisURL == "":
		return &FieldError{Field: "redis_url", Err: errors.New(`required when store = "redis"`)}
	}
	return nil
}

type testWebsocketSink struct {
	AckTimeout  time.Duration `hcl:"ack_timeout,optional" doc:"resend an unacked delivery after this"`
	MaxAttempts int           `hcl:"max_attempts,optional" doc:"then dead-letter it"`
}

func (c *testWebsocketSink) Validate() error {
	if c.MaxAttempts < 1 {
		return &FieldError{Field: "max_attempts", Err: errors.New("must be at least 1")}
	}
	return nil
}

type testRedisSink struct {
	URL       string `hcl:"url,optional"`
	KeyPrefix string `hcl:"key_prefix,optional"`
}

type noConfig struct{}

func noBuild(any, *BuildContext) (any, error) { return nil, nil }

// testKinds mirrors the kinds of shared/CONFIG.md.
var testKinds = func() *KindRegistry {
	r := NewKindRegistry()
	r.Register(Kind{
		Class: ClassSource, Name: "websocket_server",
		Summary: "Accepts WebSocket connections from clients and peers.",
		Example: `source "websocket_server" "ingress" {
  listen       = "127.0.0.1:7070"
  path         = "/ws"
  default_tags = ["local"]
  tokens       = [env("CLIENT_TOKEN")]
  tls {
    cert_file = "server.pem"
    key_file  = "server-key.pem"
  }
}`,
		NewConfig: func() any { return &testServerConfig{Listen: "127.0.0.1:7070", Path: "/ws"} },
		Build:     noBuild,
	})
	r.Register(Kind{
		Class: ClassSource, Name: "websocket_client",
		Summary: "Dials peers and keeps the links up.",
		Example: `source "websocket_client" "peers" {
  peer "azure-1" {
    url   = "wss://azure.example.com:7070/ws"
    tags  = ["azure"]
    token = env("AZURE_TOKEN")
  }
  retry {
    interval = "5s"
  }
}`,
		NewConfig: func() any {
			return &testClientConfig{
				Retry:     testRetry{Interval: 5 * time.Second, MaxInterval: time.Minute, Attempts: 10, Cooldown: 5 * time.Minute},
				Heartbeat: testHeartbeat{Interval: 10 * time.Second, Timeout: 30 * time.Second},
			}
		},
		Build: noBuild,
	})
	for _, name := range []string{"decode", "loop_check", "tag_filter", "persist", "ack", "state", "command", "fanout"} {
		r.Register(Kind{
			Class: ClassStage, Name: name, Summary: "The " + name + " stage.",
			Example:   fmt.Sprintf("stage %q {}", name),
			NewConfig: func() any { return &noConfig{} },
			Build:     noBuild,
		})
	}
	r.Register(Kind{
		Class: ClassStage, Name: "dedup",
		Summary:   "Drops messages seen within the window.",
		Example:   "stage \"dedup\" {\n  window = \"24h\"\n}",
		NewConfig: func() any { return &testDedupConfig{Window: 24 * time.Hour, Store: "badger"} },
		Build:     noBuild,
	})
	r.Register(Kind{
		Class: ClassSink, Name: "websocket",
		Summary:   "Delivers to links through durable outboxes.",
		Example:   "sink \"websocket\" \"links\" {\n  ack_timeout  = \"10s\"\n  max_attempts = 3\n}",
		NewConfig: func() any { return &testWebsocketSink{AckTimeout: 10 * time.Second, MaxAttempts: 3} },
		Build:     noBuild,
	})
	r.Register(Kind{
		Class: ClassSink, Name: "redis",
		Summary:   "Mirrors replicated state into Redis.",
		Example:   "sink \"redis\" \"mirror\" {\n  url = \"redis://127.0.0.1:6379/0\"\n}",
		NewConfig: func() any { return &testRedisSink{URL: "redis://127.0.0.1:6379/0", KeyPrefix: "slipstream:"} },
		Build:     noBuild,
	})
	return r
}()

// withEnv makes env() see exactly vars for the test.
func withEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	old := LookupEnv
	LookupEnv = func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
	t.Cleanup(func() { LookupEnv = old })
}

func mustLoad(t *testing.T, filename string, src []byte) *Config {
	t.Helper()
	cfg, diags := LoadWith(testKinds, filename, src)
	if len(diags) > 0 {
		t.Fatalf("%s: want no diagnostics, got:\n%s", filename, FormatDiagnostics(diags))
	}
	return cfg
}

func TestLoadConfigExample(t *testing.T) {
	withEnv(t, map[string]string{"CLIENT_TOKEN": "client-secret", "AZURE_TOKEN": "azure-secret"})
	src, err := os.ReadFile("testdata/config_full.hcl")
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustLoad(t, "config_full.hcl", src)

	if got := cfg.Instance; got.ID != "local-1" || got.ClusterGroup != "singleton" || got.DataDir != "data" || strings.Join(got.Tags, ",") != "local" {
		t.Errorf("instance = %+v", got)
	}
	if len(cfg.Sources) != 2 || len(cfg.Sinks) != 2 || len(cfg.Pipelines) != 1 {
		t.Fatalf("got %d sources, %d sinks, %d pipelines", len(cfg.Sources), len(cfg.Sinks), len(cfg.Pipelines))
	}
	srv := cfg.SourceByRef("source.websocket_server.ingress").Config.(*testServerConfig)
	if strings.Join(srv.Tokens, ",") != "client-secret" || srv.TLS == nil || srv.TLS.ClientCAFile != "ca.pem" {
		t.Errorf("websocket_server config = %+v", srv)
	}
	cl := cfg.SourceByRef("websocket_client.peers").Config.(*testClientConfig)
	if len(cl.Peers) != 1 || cl.Peers[0].ID != "azure-1" || cl.Peers[0].Token != "azure-secret" ||
		cl.Peers[0].TLS == nil || cl.Peers[0].TLS.ServerName != "azure.example.com" {
		t.Errorf("websocket_client peers = %+v", cl.Peers)
	}
	if cl.Retry.Cooldown != 5*time.Minute || cl.Heartbeat.Timeout != 30*time.Second {
		t.Errorf("websocket_client = %+v", cl)
	}
	p := cfg.Pipeline("sync")
	wantStages := "decode loop_check dedup tag_filter persist ack state command fanout"
	if got := strings.Join(p.StageKinds(), " "); got != wantStages {
		t.Errorf("stages = %s, want %s", got, wantStages)
	}
	if got := strings.Join(p.Sources, " "); got != "websocket_server.ingress websocket_client.peers" {
		t.Errorf("sources = %s", got)
	}
	if got := strings.Join(p.Sinks, " "); got != "websocket.links redis.mirror" {
		t.Errorf("sinks = %s", got)
	}
	dd := p.Stages[2].Config.(*testDedupConfig)
	if dd.Store != "redis" || dd.RedisURL != "redis://127.0.0.1:6379/0" || dd.Window != 24*time.Hour {
		t.Errorf("dedup = %+v", dd)
	}
	if cfg.SinkByRef("sink.redis.mirror").Config.(*testRedisSink).KeyPrefix != "slipstream:" {
		t.Error("redis sink key_prefix not decoded")
	}
	if p.Stages[2].DefRange.Start.Line != 72 || p.Stages[2].DefRange.Start.Column != 3 {
		t.Errorf("dedup DefRange = %s", formatPos(p.Stages[2].DefRange))
	}
}

func TestLoadTriangle(t *testing.T) {
	withEnv(t, nil)
	files, _ := filepath.Glob("testdata/triangle_*.hcl")
	if len(files) != 3 {
		t.Fatalf("want 3 triangle files, got %v", files)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg := mustLoad(t, filepath.Base(f), src)
		peers := cfg.SourceByRef("websocket_client.peers").Config.(*testClientConfig).Peers
		if len(peers) != 2 || peers[0].ID == cfg.Instance.ID || peers[1].ID == cfg.Instance.ID {
			t.Errorf("%s: instance %s has peers %+v", f, cfg.Instance.ID, peers)
		}
	}
}

// TestConfigMarkdownExample loads the first hcl fence of shared/CONFIG.md
// as written, when shared/ is beside the repository.
func TestConfigMarkdownExample(t *testing.T) {
	withEnv(t, nil)
	md, err := os.ReadFile("../../shared/CONFIG.md")
	if err != nil {
		t.Skip("shared/CONFIG.md not beside the repository:", err)
	}
	m := regexp.MustCompile("(?s)```hcl\n(.*?)```").FindSubmatch(md)
	if m == nil {
		t.Fatal("no hcl fence in CONFIG.md")
	}
	mustLoad(t, "CONFIG.md", m[1])
}

func TestLoadEmbeddedDefault(t *testing.T) {
	withEnv(t, nil)
	cfg := mustLoad(t, "pipelines.hcl", slipstream.DefaultConfig)
	if cfg.Instance.ID != "local-1" || cfg.Instance.DataDir != "data" {
		t.Errorf("instance = %+v", cfg.Instance)
	}
	if l := cfg.SourceByRef("websocket_server.ingress").Config.(*testServerConfig).Listen; l != "127.0.0.1:7070" {
		t.Errorf("listen = %q", l)
	}
	if c := cfg.SourceByRef("websocket_client.peers"); c != nil {
		if peers := c.Config.(*testClientConfig).Peers; len(peers) != 0 {
			t.Errorf("default config dials peers: %+v", peers)
		}
	}
	p := cfg.Pipeline("sync")
	if p == nil || !p.HasStage("state") || !p.HasStage("command") || !p.HasStage("fanout") {
		t.Errorf("pipeline = %+v", p)
	}

	withEnv(t, map[string]string{"SLIPSTREAM_INSTANCE_ID": "edge-7"})
	if cfg := mustLoad(t, "pipelines.hcl", slipstream.DefaultConfig); cfg.Instance.ID != "edge-7" {
		t.Errorf("env id not used: %+v", cfg.Instance)
	}
}

func TestLoadFile(t *testing.T) {
	withEnv(t, nil)
	path := filepath.Join(t.TempDir(), "pipelines.hcl")
	if err := os.WriteFile(path, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	// LoadFile uses DefaultKinds, where the real kinds are not registered in
	// this package's tests: the unknown kinds prove it read and decoded path.
	_, diags := LoadFile(path)
	if out := FormatDiagnostics(diags); !strings.Contains(out, path+":1:1: Unknown source kind") {
		t.Errorf("LoadFile diagnostics:\n%s", out)
	}
	_, diags = LoadFile(filepath.Join(t.TempDir(), "missing.hcl"))
	if !diags.HasErrors() || !strings.Contains(FormatDiagnostics(diags), "Cannot read configuration file") {
		t.Errorf("missing file: %s", FormatDiagnostics(diags))
	}
}

// minimal is the smallest valid config; the broken cases below vary it.
const minimal = `source "websocket_server" "in" {}
sink "websocket" "out" {}
pipeline "p" {
  sources = [source.websocket_server.in]
  stage "decode" {}
  stage "persist" {}
  stage "ack" {}
  stage "fanout" {}
  sinks = [sink.websocket.out]
}
`

func TestDefaults(t *testing.T) {
	withEnv(t, nil)
	cfg := mustLoad(t, "min.hcl", []byte(minimal))
	want := Instance{ID: "local-1", ClusterGroup: "singleton", DataDir: "data"}
	if cfg.Instance.ID != want.ID || cfg.Instance.ClusterGroup != want.ClusterGroup || cfg.Instance.DataDir != want.DataDir || len(cfg.Instance.Tags) != 0 {
		t.Errorf("instance = %+v, want %+v", cfg.Instance, want)
	}
	if cfg.Admin.Listen != "127.0.0.1:9090" || cfg.Admin.Token != "" || len(cfg.Admin.ReadyPeers) != 0 {
		t.Errorf("admin = %+v", cfg.Admin)
	}
	if cfg.Log != (LogConfig{Level: "info", Format: "json"}) {
		t.Errorf("log = %+v", cfg.Log)
	}
	if cfg.Tracing != (TracingConfig{Exporter: "none", SampleRatio: 1}) {
		t.Errorf("tracing = %+v", cfg.Tracing)
	}
	if srv := cfg.Sources[0].Config.(*testServerConfig); srv.Listen != "127.0.0.1:7070" || srv.Path != "/ws" || srv.TLS != nil {
		t.Errorf("websocket_server defaults = %+v", srv)
	}
	if ws := cfg.Sinks[0].Config.(*testWebsocketSink); *ws != (testWebsocketSink{AckTimeout: 10 * time.Second, MaxAttempts: 3}) {
		t.Errorf("websocket sink defaults = %+v", ws)
	}

	// Partly written blocks keep the defaults of what they omit.
	cfg = mustLoad(t, "partial.hcl", []byte(`
log { level = "debug" }
tracing { exporter = "stdout" }
source "websocket_client" "peers" {
  retry { attempts = 0 }
}
pipeline "p" {
  sources = [source.websocket_client.peers]
  stage "decode" {}
  stage "dedup" { store = "badger" }
}
`))
	if cfg.Log != (LogConfig{Level: "debug", Format: "json"}) || cfg.Tracing.SampleRatio != 1 || cfg.Tracing.ServiceName != "" {
		t.Errorf("log = %+v, tracing = %+v", cfg.Log, cfg.Tracing)
	}
	cl := cfg.Sources[0].Config.(*testClientConfig)
	if cl.Retry != (testRetry{Interval: 5 * time.Second, MaxInterval: time.Minute, Attempts: 0, Cooldown: 5 * time.Minute}) {
		t.Errorf("retry = %+v", cl.Retry)
	}
	if cl.Heartbeat.Interval != 10*time.Second {
		t.Errorf("heartbeat = %+v", cl.Heartbeat)
	}
	if dd := cfg.Pipelines[0].Stages[1].Config.(*testDedupConfig); dd.Window != 24*time.Hour {
		t.Errorf("dedup window = %v", dd.Window)
	}
}

func TestEnv(t *testing.T) {
	src := `instance {
  id            = env("ID")
  cluster_group = env("GROUP", "fallback")
  data_dir      = env("DIR", "unused")
}
` + minimal
	withEnv(t, map[string]string{"ID": "aws-1", "DIR": "/var/lib/slipstream"})
	cfg := mustLoad(t, "env.hcl", []byte(src))
	if got := cfg.Instance; got.ID != "aws-1" || got.ClusterGroup != "fallback" || got.DataDir != "/var/lib/slipstream" {
		t.Errorf("instance = %+v", got)
	}

	// A set but empty variable is set: the default is not used.
	withEnv(t, map[string]string{"ID": "aws-1", "GROUP": "", "DIR": "d"})
	_, diags := LoadWith(testKinds, "env.hcl", []byte(src))
	if out := FormatDiagnostics(diags); !strings.Contains(out, `env.hcl:3:19: Invalid value for "cluster_group"; must not be empty`) {
		t.Errorf("empty GROUP:\n%s", out)
	}

	// Numbers and bools may come from env() as strings.
	withEnv(t, map[string]string{"ATTEMPTS": "7", "CMDS": "true"})
	cfg = mustLoad(t, "envnum.hcl", []byte(strings.Replace(strings.Replace(minimal,
		`sink "websocket" "out" {}`, `sink "websocket" "out" { max_attempts = env("ATTEMPTS") }`, 1),
		`source "websocket_server" "in" {}`, `source "websocket_server" "in" { allow_commands = env("CMDS", "false") }`, 1)))
	if cfg.Sinks[0].Config.(*testWebsocketSink).MaxAttempts != 7 || !cfg.Sources[0].Config.(*testServerConfig).AllowCommands {
		t.Error("env() strings not converted to number / bool")
	}
}

type brokenCase struct {
	name      string
	hcl       string
	wantErr   string
	line, col int
}

var brokenCases = []brokenCase{
	{
		name:    "unknown top-level block",
		hcl:     "sorce \"websocket_server\" \"in\" {}\n" + minimal,
		wantErr: `Unsupported block type; Blocks of type "sorce" are not expected here. Did you mean "source"?`,
		line:    1, col: 1,
	},
	{
		name: "unknown attribute",
		hcl: `source "websocket_server" "in" {
  listn = "127.0.0.1:1"
}
` + minimal[len("source \"websocket_server\" \"in\" {}\n"):],
		wantErr: `Unsupported argument; An argument named "listn" is not expected here. Did you mean "listen"?`,
		line:    2, col: 3,
	},
	{
		name: "unknown attribute in a nested block",
		hcl: `source "websocket_client" "peers" {
  peer "a" {
    url = "ws://a/ws"
    tls {
      ca = "ca.pem"
    }
  }
}
` + minimal,
		wantErr: `Unsupported argument; An argument named "ca" is not expected here.`,
		line:    5, col: 7,
	},
	{
		name:    "unknown stage kind",
		hcl:     strings.Replace(minimal, `stage "persist" {}`, "stage \"persist\" {}\n  stage \"dedupe\" {}", 1),
		wantErr: `Unknown stage kind "dedupe"; known kinds: ack, command, decode, dedup, fanout, loop_check, persist, state, tag_filter. Did you mean "dedup"?`,
		line:    7, col: 3,
	},
	{
		name:    "unknown source kind",
		hcl:     strings.ReplaceAll(minimal, "websocket_server", "websocket_srv"),
		wantErr: `Unknown source kind "websocket_srv"; known kinds: websocket_client, websocket_server`,
		line:    1, col: 1,
	},
	{
		name:    "unknown sink kind",
		hcl:     minimal + `sink "stdout" "debug" {}` + "\n",
		wantErr: `Unknown sink kind "stdout"; known kinds: redis, websocket`,
		line:    11, col: 1,
	},
	{
		name:    "duplicate source",
		hcl:     minimal + `source "websocket_server" "in" { listen = "127.0.0.1:1" }` + "\n",
		wantErr: `Duplicate source "websocket_server" "in"; previously defined at test.hcl:1:1`,
		line:    11, col: 1,
	},
	{
		name:    "duplicate sink",
		hcl:     minimal + "\n" + `sink "websocket" "out" {}` + "\n",
		wantErr: `Duplicate sink "websocket" "out"; previously defined at test.hcl:2:1`,
		line:    12, col: 1,
	},
	{
		name:    "duplicate pipeline",
		hcl:     minimal + "pipeline \"p\" {}\n",
		wantErr: `Duplicate pipeline "p"; previously defined at test.hcl:3:1`,
		line:    11, col: 1,
	},
	{
		name:    "duplicate singleton block",
		hcl:     "log {}\nadmin {}\nlog {\n  level = \"debug\"\n}\n" + minimal,
		wantErr: `Duplicate log block; previously defined at test.hcl:1:1`,
		line:    3, col: 1,
	},
	{
		name:    "undefined source",
		hcl:     strings.Replace(minimal, "[source.websocket_server.in]", "[source.websocket_server.ingress]", 1),
		wantErr: `Reference to undefined source; no source "websocket_server" "ingress" is defined in this file`,
		line:    4, col: 14,
	},
	{
		name:    "undefined sink suggests the closest",
		hcl:     strings.Replace(minimal, "[sink.websocket.out]", "[sink.websocket.ou]", 1),
		wantErr: `Reference to undefined sink; no sink "websocket" "ou" is defined in this file. Did you mean sink.websocket.out?`,
		line:    9, col: 12,
	},
	{
		name:    "reference too short",
		hcl:     strings.Replace(minimal, "[source.websocket_server.in]", "[source.websocket_server]", 1),
		wantErr: `Invalid source reference; expected a reference of the form source.KIND.NAME`,
		line:    4, col: 14,
	},
	{
		name:    "reference of the wrong class",
		hcl:     strings.Replace(minimal, "[source.websocket_server.in]", "[source.websocket_server.in, sink.websocket.out]", 1),
		wantErr: `Invalid source reference; expected a reference of the form source.KIND.NAME; sources lists sources`,
		line:    4, col: 42,
	},
	{
		name:    "reference written as a string",
		hcl:     strings.Replace(minimal, "[source.websocket_server.in]", `["source.websocket_server.in"]`, 1),
		wantErr: `Invalid source reference; expected a reference of the form source.KIND.NAME, not a value or an expression`,
		line:    4, col: 14,
	},
	{
		name:    "references not in a list",
		hcl:     strings.Replace(minimal, "[source.websocket_server.in]", "source.websocket_server.in", 1),
		wantErr: `Invalid value for "sources"; expected a list of references; write sources = [source.websocket_server.in]`,
		line:    4, col: 13,
	},
	{
		name:    "duplicate reference",
		hcl:     strings.Replace(minimal, "[sink.websocket.out]", "[sink.websocket.out, sink.websocket.out]", 1),
		wantErr: `Duplicate reference to sink.websocket.out; previously defined at test.hcl:9:12`,
		line:    9, col: 32,
	},
	{
		name: "source in two pipelines",
		hcl: minimal + `pipeline "q" {
  sources = [source.websocket_server.in]
  stage "decode" {}
}
`,
		wantErr: `Source used by more than one pipeline; source.websocket_server.in is already used by pipeline "p" at test.hcl:4:14`,
		line:    12, col: 14,
	},
	{
		name:    "wrong type: number for a string",
		hcl:     strings.Replace(minimal, `source "websocket_server" "in" {}`, `source "websocket_server" "in" { path = 7 }`, 1),
		wantErr: `Invalid value for "path"; expected a string, got a number`,
		line:    1, col: 41,
	},
	{
		name:    "wrong type: string for a number",
		hcl:     strings.Replace(minimal, `sink "websocket" "out" {}`, `sink "websocket" "out" { max_attempts = "three" }`, 1),
		wantErr: `Invalid value for "max_attempts"; expected a number, got a string`,
		line:    2, col: 41,
	},
	{
		name:    "wrong type: string for a list",
		hcl:     strings.Replace(minimal, `source "websocket_server" "in" {}`, `source "websocket_server" "in" { default_tags = "local" }`, 1),
		wantErr: `Invalid value for "default_tags"; expected a list of strings, got a string`,
		line:    1, col: 49,
	},
	{
		name:    "wrong type: fraction for a whole number",
		hcl:     strings.Replace(minimal, `sink "websocket" "out" {}`, `sink "websocket" "out" { max_attempts = 1.5 }`, 1),
		wantErr: `Invalid value for "max_attempts"; expected a whole number, got 1.5`,
		line:    2, col: 41,
	},
	{
		name:    "bad duration",
		hcl:     strings.Replace(minimal, `stage "persist" {}`, "stage \"dedup\" {\n    window = \"5x\"\n  }\n  stage \"persist\" {}", 1),
		wantErr: `Invalid value for "window"; time: invalid duration "5x": unknown unit "x" (units: ns, us, ms, s, m, h)`,
		line:    7, col: 14,
	},
	{
		name:    "negative duration",
		hcl:     strings.Replace(minimal, `sink "websocket" "out" {}`, `sink "websocket" "out" { ack_timeout = "-1s" }`, 1),
		wantErr: `Invalid value for "ack_timeout"; duration "-1s" must not be negative`,
		line:    2, col: 40,
	},
	{
		name:    "duration written as a number",
		hcl:     strings.Replace(minimal, `sink "websocket" "out" {}`, `sink "websocket" "out" { ack_timeout = 10 }`, 1),
		wantErr: `Invalid value for "ack_timeout"; expected a duration string such as "5s", got a number`,
		line:    2, col: 40,
	},
	{
		name:    "env without default, unset",
		hcl:     "admin {\n  token = env(\"UNSET_VAR\")\n}\n" + minimal,
		wantErr: `Error in function call; Call to function "env" failed: environment variable "UNSET_VAR" is not set and no default is given`,
		line:    2, col: 11,
	},
	{
		name:    "env with two defaults",
		hcl:     "admin {\n  token = env(\"A\", \"b\", \"c\")\n}\n" + minimal,
		wantErr: `Invalid function argument; Invalid value for "default" parameter: env takes a name and at most one default.`,
		line:    2, col: 26,
	},
	{
		name:    "decode not first",
		hcl:     strings.Replace(minimal, `  stage "decode" {}`+"\n", "  stage \"tag_filter\" {}\n  stage \"decode\" {}\n", 1),
		wantErr: `Stage "decode" must be the first stage; every later stage reads the decoded message; stage "tag_filter" comes before it at test.hcl:5:3`,
		line:    6, col: 3,
	},
	{
		name:    "no decode",
		hcl:     strings.Replace(minimal, `  stage "decode" {}`+"\n", "", 1),
		wantErr: `Pipeline "p" has no decode stage; the first stage of a pipeline must be stage "decode" {}`,
		line:    5, col: 3,
	},
	{
		name:    "ack before persist",
		hcl:     strings.Replace(minimal, "stage \"persist\" {}\n  stage \"ack\" {}", "stage \"ack\" {}\n  stage \"persist\" {}", 1),
		wantErr: `Stage "ack" must come after "persist"; a message is acknowledged only once it is stored; persist is at test.hcl:7:3`,
		line:    6, col: 3,
	},
	{
		name:    "ack without persist",
		hcl:     strings.Replace(minimal, "  stage \"persist\" {}\n", "", 1),
		wantErr: `Stage "ack" needs a "persist" stage`,
		line:    6, col: 3,
	},
	{
		name:    "fanout before persist",
		hcl:     strings.Replace(minimal, "stage \"persist\" {}\n  stage \"ack\" {}\n  stage \"fanout\" {}", "stage \"fanout\" {}\n  stage \"persist\" {}\n  stage \"ack\" {}", 1),
		wantErr: `Stage "fanout" must come after "persist"; sinks deliver from the outboxes that persist writes; persist is at test.hcl:7:3`,
		line:    6, col: 3,
	},
	{
		name:    "sinks without fanout",
		hcl:     strings.Replace(minimal, "  stage \"fanout\" {}\n", "", 1),
		wantErr: `Pipeline "p" has sinks but no fanout stage`,
		line:    8, col: 3,
	},
	{
		name:    "pipeline without sources",
		hcl:     strings.Replace(minimal, "  sources = [source.websocket_server.in]\n", "", 1),
		wantErr: `Pipeline "p" has no sources; write sources = [source.KIND.NAME, ...]`,
		line:    3, col: 1,
	},
	{
		name:    "pipeline with an empty source list",
		hcl:     strings.Replace(minimal, "[source.websocket_server.in]", "[]", 1),
		wantErr: `Pipeline "p" has no sources`,
		line:    4, col: 3,
	},
	{
		name:    "same stage twice",
		hcl:     strings.Replace(minimal, `stage "ack" {}`, "stage \"ack\" {}\n  stage \"persist\" {}", 1),
		wantErr: `Duplicate stage "persist"; previously defined at test.hcl:6:3`,
		line:    8, col: 3,
	},
	{
		name:    "no pipeline",
		hcl:     "source \"websocket_server\" \"in\" {}\n",
		wantErr: `No pipeline defined`,
		line:    1, col: 1,
	},
	{
		name:    "log level",
		hcl:     "log {\n  level = \"verbose\"\n}\n" + minimal,
		wantErr: `Invalid value for "level"; must be one of debug, info, warn, error, got "verbose"`,
		line:    2, col: 11,
	},
	{
		name:    "log format",
		hcl:     "log {\n  format = \"xml\"\n}\n" + minimal,
		wantErr: `Invalid value for "format"; must be one of json, text, got "xml"`,
		line:    2, col: 12,
	},
	{
		name:    "tracing exporter",
		hcl:     "tracing {\n  exporter = \"jaeger\"\n}\n" + minimal,
		wantErr: `Invalid value for "exporter"; must be one of none, otlp_http, otlp_grpc, stdout, got "jaeger"`,
		line:    2, col: 14,
	},
	{
		name:    "sample ratio out of range",
		hcl:     "tracing {\n  sample_ratio = 1.5\n}\n" + minimal,
		wantErr: `Invalid value for "sample_ratio"; must be between 0 and 1, got 1.5`,
		line:    2, col: 18,
	},
	{
		name:    "empty instance id",
		hcl:     "instance {\n  id = \"\"\n}\n" + minimal,
		wantErr: `Invalid value for "id"; must not be empty`,
		line:    2, col: 8,
	},
	{
		name:    "memtable too small",
		hcl:     "instance {\n  memtable_size = 65536\n}\n" + minimal,
		wantErr: `Invalid value for "memtable_size"; must be 0 (the default, 8388608) or between 1048576 (1 MiB) and 1073741824 (1 GiB), got 65536`,
		line:    2, col: 19,
	},
	{
		name:    "admin listen",
		hcl:     "admin {\n  listen = \"9090\"\n}\n" + minimal,
		wantErr: `Invalid value for "listen"; must be host:port, got "9090"`,
		line:    2, col: 12,
	},
	{
		name:    "admin on every interface without a token",
		hcl:     "admin {\n  listen = \"0.0.0.0:9090\"\n}\n" + minimal,
		wantErr: `Invalid value for "listen"; "0.0.0.0:9090" is reachable from other machines, so the admin API needs a token`,
		line:    2, col: 12,
	},
	{
		name:    "validate error on an attribute not written points at the block",
		hcl:     strings.Replace(minimal, `stage "persist" {}`, "stage \"dedup\" {\n    store = \"redis\"\n  }\n  stage \"persist\" {}", 1),
		wantErr: `Invalid value for "redis_url"; required when store = "redis"`,
		line:    6, col: 3,
	},
	{
		name: "validate error in a nested block",
		hcl: `source "websocket_client" "peers" {
  heartbeat {
    interval = "30s"
    timeout  = "10s"
  }
}
` + minimal,
		wantErr: `Invalid value for "heartbeat.timeout"; must be longer than heartbeat.interval`,
		line:    4, col: 16,
	},
	{
		name: "validate error of a repeated block",
		hcl: `source "websocket_client" "peers" {
  peer "a" {
    url = "http://a"
  }
}
` + minimal,
		wantErr: `Invalid value for "url"; must be a ws:// or wss:// URL, got "http://a"`,
		line:    3, col: 11,
	},
	{
		name: "duplicate labelled block",
		hcl: `source "websocket_client" "peers" {
  peer "a" {
    url = "ws://a/ws"
  }
  peer "a" {
    url = "ws://b/ws"
  }
}
` + minimal,
		wantErr: `Duplicate peer "a"; previously defined at test.hcl:2:3`,
		line:    5, col: 3,
	},
	{
		name: "duplicate single block",
		hcl: `source "websocket_client" "peers" {
  retry {}
  retry {}
}
` + minimal,
		wantErr: `Duplicate retry block; previously defined at test.hcl:2:3`,
		line:    3, col: 3,
	},
	{
		name: "missing required attribute",
		hcl: `source "websocket_client" "peers" {
  peer "a" {
    tags = ["x"]
  }
}
` + minimal,
		wantErr: `Missing required argument; The argument "url" is required, but no definition was found.`,
		line:    2, col: 12,
	},
	{
		name:    "name that cannot be referenced",
		hcl:     minimal + `sink "websocket" "my out" {}` + "\n",
		wantErr: `Invalid sink name "my out"; a name starts with a letter`,
		line:    11, col: 18,
	},
	{
		name:    "syntax error",
		hcl:     "pipeline \"p\" {\n  sources = [\n}\n",
		wantErr: `Invalid expression; Expected the start of an expression`,
		line:    3, col: 1,
	},
}

func TestBrokenConfigs(t *testing.T) {
	withEnv(t, map[string]string{"A": "a"})
	for _, tc := range brokenCases {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := LoadWith(testKinds, "test.hcl", []byte(tc.hcl))
			out := FormatDiagnostics(diags)
			if !diags.HasErrors() {
				t.Fatalf("want an error, got:\n%s", out)
			}
			want := fmt.Sprintf("test.hcl:%d:%d: %s", tc.line, tc.col, tc.wantErr)
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, fmt.Sprintf("test.hcl:%d:%d: ", tc.line, tc.col)) && strings.Contains(line, tc.wantErr) {
					return
				}
			}
			t.Errorf("want a line like\n  %s\ngot:\n%s", want, out)
		})
	}
}

// TestBrokenConfigsSingleError checks that each broken case reports its
// problem once, without follow-on errors.
func TestBrokenConfigsSingleError(t *testing.T) {
	withEnv(t, map[string]string{"A": "a"})
	for _, tc := range brokenCases {
		_, diags := LoadWith(testKinds, "test.hcl", []byte(tc.hcl))
		if n := len(diags.Errs()); n != 1 {
			t.Errorf("%s: want 1 error, got %d:\n%s", tc.name, n, FormatDiagnostics(diags))
		}
	}
}

func TestAllProblemsInOneRun(t *testing.T) {
	withEnv(t, nil)
	src := `log {
  level = "loud"
}
source "websocket_server" "in" {
  listen = "127.0.0.1:7070"
}
pipeline "p" {
  sources = [source.websocket_server.in]
  stage "decode" {}
  stage "dedupe" {}
  stage "fanout" {}
  sinks = [sink.websocket.out]
}
`
	_, diags := LoadWith(testKinds, "three.hcl", []byte(src))
	want := []string{
		`three.hcl:2:11: Invalid value for "level"; must be one of debug, info, warn, error, got "loud"`,
		`three.hcl:10:3: Unknown stage kind "dedupe"; known kinds: ack, command, decode, dedup, fanout, loop_check, persist, state, tag_filter. Did you mean "dedup"?`,
		`three.hcl:12:12: Reference to undefined sink; no sink "websocket" "out" is defined in this file`,
	}
	got := strings.Split(strings.TrimSuffix(FormatDiagnostics(diags), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("want %d lines, got:\n%s", len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i+1, got[i], want[i])
		}
	}
}

func TestWarnings(t *testing.T) {
	withEnv(t, nil)
	src := minimal + `source "websocket_client" "spare" {}
sink "redis" "mirror" {}
pipeline "q" {
  sources = [source.websocket_server.x]
  stage "decode" {}
  stage "fanout" {}
}
`
	_, diags := LoadWith(testKinds, "w.hcl", []byte(src))
	want := strings.Join([]string{
		`w.hcl:14:14: Reference to undefined source; no source "websocket_server" "x" is defined in this file. Did you mean source.websocket_server.in?`,
		`w.hcl:11:1: warning: Unused source "websocket_client" "spare"; no pipeline lists source.websocket_client.spare`,
		`w.hcl:12:1: warning: Unused sink "redis" "mirror"; no pipeline lists sink.redis.mirror`,
		`w.hcl:16:3: warning: Stage "fanout" has no sinks; the pipeline lists no sinks, so fanout delivers nothing`,
	}, "\n") + "\n"
	if got := FormatDiagnostics(diags); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestFormatDiagnostics(t *testing.T) {
	r := func(file string, line, col int) *hcl.Range {
		return &hcl.Range{Filename: file, Start: hcl.Pos{Line: line, Column: col}, End: hcl.Pos{Line: line, Column: col + 1}}
	}
	diags := hcl.Diagnostics{
		{Severity: hcl.DiagWarning, Summary: "W1", Subject: r("a.hcl", 1, 1)},
		{Severity: hcl.DiagError, Summary: "E3", Detail: "two\nlines", Subject: r("b.hcl", 1, 1)},
		{Severity: hcl.DiagError, Summary: "E2", Subject: r("a.hcl", 9, 2)},
		{Severity: hcl.DiagError, Summary: "E1", Subject: r("a.hcl", 9, 1)},
		{Severity: hcl.DiagError, Summary: "E0"},
	}
	want := "E0\na.hcl:9:1: E1\na.hcl:9:2: E2\nb.hcl:1:1: E3; two lines\na.hcl:1:1: warning: W1\n"
	if got := FormatDiagnostics(diags); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if diags[0].Summary != "W1" {
		t.Error("FormatDiagnostics reordered its argument")
	}
	if FormatDiagnostics(nil) != "" {
		t.Error("no diagnostics should format as empty")
	}
}

func TestDecodeKindBlock(t *testing.T) {
	withEnv(t, nil)
	k, _ := testKinds.Lookup(ClassStage, "dedup")
	cfg, diags := DecodeKindBlock(k, "dedup.hcl", []byte(`stage "dedup" { window = "1m" }`))
	if diags.HasErrors() || cfg.(*testDedupConfig).Window != time.Minute {
		t.Fatalf("cfg = %+v, diags:\n%s", cfg, FormatDiagnostics(diags))
	}
	_, diags = DecodeKindBlock(k, "dedup.hcl", []byte(`stage "ack" {}`))
	if got := FormatDiagnostics(diags); !strings.Contains(got, `dedup.hcl:1:7: Expected a stage of kind "dedup"`) {
		t.Errorf("wrong kind: %s", got)
	}
	k, _ = testKinds.Lookup(ClassSink, "websocket")
	_, diags = DecodeKindBlock(k, "ws.hcl", []byte("sink \"websocket\" \"x\" {\n  max_attempts = 0\n}"))
	if got := FormatDiagnostics(diags); got != "ws.hcl:2:18: Invalid value for \"max_attempts\"; must be at least 1\n" {
		t.Errorf("validate: %s", got)
	}
}

// TestExamples decodes the example of every fixed block and registered kind:
// the mirrors here, and the real kinds once their packages register them in
// DefaultKinds (see CheckExamples, which their own tests can call too).
func TestExamples(t *testing.T) {
	withEnv(t, nil)
	for name, reg := range map[string]*KindRegistry{"DefaultKinds": DefaultKinds, "testKinds": testKinds} {
		if diags := CheckExamples(reg); len(diags) > 0 {
			t.Errorf("%s:\n%s", name, FormatDiagnostics(diags))
		}
		for _, class := range []Class{ClassSource, ClassStage, ClassSink} {
			for _, k := range reg.Kinds(class) {
				if k.Summary == "" {
					t.Errorf("%s: %s kind %q has no summary", name, class, k.Name)
				}
			}
		}
	}
	bad := NewKindRegistry()
	bad.Register(Kind{Class: ClassStage, Name: "x", NewConfig: func() any { return &noConfig{} }, Build: noBuild})
	bad.Register(Kind{Class: ClassStage, Name: "y", Example: `stage "y" { nope = 1 }`, NewConfig: func() any { return &noConfig{} }, Build: noBuild})
	got := FormatDiagnostics(CheckExamples(bad))
	for _, want := range []string{`The stage kind "x" has no example`, `stage_y.example.hcl:1:13: Unsupported argument`} {
		if !strings.Contains(got, want) {
			t.Errorf("CheckExamples of bad kinds: want %q in:\n%s", want, got)
		}
	}
}

func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.hcl")
	for _, path := range files {
		src, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add(slipstream.DefaultConfig)
	for _, tc := range brokenCases {
		f.Add([]byte(tc.hcl))
	}
	old := LookupEnv
	f.Cleanup(func() { LookupEnv = old })
	LookupEnv = func(name string) (string, bool) {
		if strings.HasPrefix(name, "SET") {
			return "7", true
		}
		return "", false
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, diags := LoadWith(testKinds, "fuzz.hcl", src)
		if cfg == nil {
			t.Fatal("nil Config")
		}
		_ = FormatDiagnostics(diags)
		for _, d := range diags {
			if d.Subject == nil {
				t.Fatalf("diagnostic without a subject: %s", FormatDiagnostic(d))
			}
		}
	})
}
