package envconfig

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/slipstream-sync/slipstream/pipeline"
	_ "github.com/slipstream-sync/slipstream/sinks"
	_ "github.com/slipstream-sync/slipstream/sources"
	_ "github.com/slipstream-sync/slipstream/stages"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestApplies(t *testing.T) {
	if Applies(env(nil)) {
		t.Error("applies with no variable set")
	}
	if !Applies(env(map[string]string{"SLIPSTREAM_STORAGE_PATH": "/var/lib/s"})) || !Applies(env(map[string]string{"URL_CONFIG": "W10="})) {
		t.Error("does not apply with URL_CONFIG or SLIPSTREAM_STORAGE_PATH set")
	}
}

// Each environment translates to HCL that the normal loader accepts, with
// the expected values.
func TestTranslate(t *testing.T) {
	for _, c := range []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, cfg *pipeline.Config, hcl string)
	}{
		{"defaults", map[string]string{"SLIPSTREAM_STORAGE_PATH": "/tmp/s", "SLIPSTREAM_INSTANCE_ID": "pi-aws"},
			func(t *testing.T, cfg *pipeline.Config, hcl string) {
				if cfg.Instance.ID != "pi-aws" || cfg.Instance.DataDir != "/tmp/s" || cfg.Instance.ClusterGroup != "pi-aws" ||
					strings.Join(cfg.Instance.Tags, ",") != "local" {
					t.Errorf("instance = %+v", cfg.Instance)
				}
				if cfg.Admin.Listen != "127.0.0.1:8080" || cfg.Log.Level != "info" || cfg.Log.Messages {
					t.Errorf("admin %+v log %+v", cfg.Admin, cfg.Log)
				}
				if len(cfg.Sources) != 1 || !strings.Contains(hcl, `listen       = "0.0.0.0:7070"`) || !strings.Contains(hcl, "max_attempts = 3") {
					t.Errorf("sources %d:\n%s", len(cfg.Sources), hcl)
				}
			}},
		{"everything", map[string]string{
			"URL_CONFIG": b64(`[{"url":"wss://azure.example.com:7070/ws","tags":["azure","prod"],"clusterGroupId":"azure",
				"tls":{"ca":"/etc/ca.pem","cert":"/etc/me.pem","key":"/etc/me-key.pem","rejectUnauthorized":false}},
				{"id":"gcp-1","url":"ws://10.0.0.2:7070/ws","tags":["gcp"]}]`),
			"SLIPSTREAM_RETRY_IN_N_SECONDS": "7", "SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS": "0", "METRICS_PORT": "9191",
			"ENABLE_MESSAGE_LOGS": "true", "ENABLE_DEBUG_LOGS": "1", "MAX_MESSAGE_REPUBLISH_ATTEMPTS": "9",
			"SLIPSTREAM_INSTANCE_ID": "pi-aws", "SLIPSTREAM_LISTEN": "127.0.0.1:7171", "SLIPSTREAM_TAGS": "aws, prod",
			"SLIPSTREAM_CLUSTER_GROUP": "aws", "SLIPSTREAM_ADMIN_TOKEN": "tok",
		}, func(t *testing.T, cfg *pipeline.Config, hcl string) {
			if cfg.Instance.ClusterGroup != "aws" || strings.Join(cfg.Instance.Tags, ",") != "aws,prod" || cfg.Instance.DataDir != "data" {
				t.Errorf("instance = %+v", cfg.Instance)
			}
			if cfg.Admin.Listen != "0.0.0.0:9191" || cfg.Admin.Token != "tok" || cfg.Log.Level != "debug" || !cfg.Log.Messages {
				t.Errorf("admin %+v log %+v", cfg.Admin, cfg.Log)
			}
			for _, want := range []string{
				`peer "azure.example.com:7070" {`, `tags = ["azure", "prod"]`, `ca_file              = "/etc/ca.pem"`,
				`cert_file            = "/etc/me.pem"`, `key_file             = "/etc/me-key.pem"`, `insecure_skip_verify = true`,
				`# clusterGroupId "azure"`, `peer "gcp-1" {`, `interval     = "7s"`, `max_interval = "1m0s"`, `attempts     = 0`,
				`max_attempts = 9`, `listen       = "127.0.0.1:7171"`, `default_tags = ["aws", "prod"]`,
				`sources = [source.websocket_server.ingress, source.websocket_client.peers]`,
			} {
				if !strings.Contains(hcl, want) {
					t.Errorf("HCL lacks %s:\n%s", want, hcl)
				}
			}
		}},
		{"top-level TLS options, unpadded base64", map[string]string{
			"URL_CONFIG":             strings.TrimRight(b64(`[{"url":"wss://h:1/ws","ca":"/ca.pem","rejectUnauthorized":true}]`), "="),
			"SLIPSTREAM_INSTANCE_ID": "x", "SLIPSTREAM_RETRY_IN_N_SECONDS": "120",
		}, func(t *testing.T, _ *pipeline.Config, hcl string) {
			if !strings.Contains(hcl, `ca_file              = "/ca.pem"`) || strings.Contains(hcl, "insecure") || !strings.Contains(hcl, `max_interval = "2m0s"`) {
				t.Errorf("HCL:\n%s", hcl)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			hcl, err := Translate(env(c.env))
			if err != nil {
				t.Fatal(err)
			}
			t.Setenv("SLIPSTREAM_ADMIN_TOKEN", c.env["SLIPSTREAM_ADMIN_TOKEN"])
			cfg, diags := pipeline.Load("env", []byte(hcl))
			if diags.HasErrors() {
				t.Fatalf("%s\n%s", pipeline.FormatDiagnostics(diags), hcl)
			}
			c.check(t, cfg, hcl)
		})
	}
}

// Bad variables are errors naming the variable and saying what is wanted.
func TestTranslateErrors(t *testing.T) {
	for _, c := range []struct {
		env       map[string]string
		variable  string
		substring string
	}{
		{map[string]string{"URL_CONFIG": "%%%"}, "URL_CONFIG", "is not base64"},
		{map[string]string{"URL_CONFIG": b64(`{"url":"ws://h:1"}`)}, "URL_CONFIG", "JSON list of peers"},
		{map[string]string{"URL_CONFIG": b64(`[{"url":"http://h:1"}]`)}, "URL_CONFIG", "peer 0: url must be ws://"},
		{map[string]string{"URL_CONFIG": b64(`[{"url":"ws://h:1","colour":"red"}]`)}, "URL_CONFIG", `unknown field "colour"`},
		{map[string]string{"URL_CONFIG": b64(`[{"url":"ws://h:1/a"},{"url":"ws://h:1/b"}]`)}, "URL_CONFIG", `same id "h:1"`},
		{map[string]string{"URL_CONFIG": b64(`[{"url":"wss://h:1","tls":{"ca":"-----BEGIN CERTIFICATE-----"}}]`)}, "URL_CONFIG", "holds PEM text"},
		{map[string]string{"URL_CONFIG": b64(`[{"url":"ws://h:1","tls":{"ca":"/ca.pem"}}]`)}, "URL_CONFIG", "need a wss:// url"},
		{map[string]string{"SLIPSTREAM_RETRY_IN_N_SECONDS": "soon"}, "SLIPSTREAM_RETRY_IN_N_SECONDS", "whole number of at least 1"},
		{map[string]string{"SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS": "-1"}, "SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS", "at least 0"},
		{map[string]string{"METRICS_PORT": "70000"}, "METRICS_PORT", "port number"},
		{map[string]string{"ENABLE_DEBUG_LOGS": "maybe"}, "ENABLE_DEBUG_LOGS", "true or false"},
		{map[string]string{"MAX_MESSAGE_REPUBLISH_ATTEMPTS": "x"}, "MAX_MESSAGE_REPUBLISH_ATTEMPTS", "whole number"},
		{map[string]string{"SLIPSTREAM_LISTEN": "7070"}, "SLIPSTREAM_LISTEN", "host:port"},
	} {
		c.env["SLIPSTREAM_INSTANCE_ID"] = "x"
		_, err := Translate(env(c.env))
		var e *Error
		if !errors.As(err, &e) || e.Var != c.variable || !strings.Contains(err.Error(), c.substring) {
			t.Errorf("%v: error %v, want one about %s saying %q", c.env, err, c.variable, c.substring)
		}
	}
}
