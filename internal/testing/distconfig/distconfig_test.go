package distconfig

import (
	"strings"
	"testing"
)

func TestYAML(t *testing.T) {
	t.Parallel()
	plain := Config{Addr: "127.0.0.1:5001", Root: "/tmp/r", AccessLog: true, LogLevel: "warn"}.YAML()
	for _, want := range []string{"level: warn", "disabled: false", "rootdirectory: /tmp/r", "addr: 127.0.0.1:5001", "enabled: true"} {
		if !strings.Contains(plain, want) {
			t.Errorf("config lacks %q:\n%s", want, plain)
		}
	}
	if strings.Contains(plain, "proxy:") {
		t.Errorf("a plain registry got a proxy section:\n%s", plain)
	}
	proxy := Config{Addr: "127.0.0.1:5002", Root: "/tmp/p", RemoteURL: "http://127.0.0.1:9"}.YAML()
	for _, want := range []string{"level: error", "disabled: true", "proxy:\n  remoteurl: http://127.0.0.1:9\n"} {
		if !strings.Contains(proxy, want) {
			t.Errorf("proxy config lacks %q:\n%s", want, proxy)
		}
	}
}
