package realenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// WriteContext writes a build context: a Dockerfile and files.
func WriteContext(t testing.TB, dockerfile string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	files2 := map[string]string{"Dockerfile": dockerfile}
	for k, v := range files {
		files2[k] = v
	}
	for name, content := range files2 {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// CachedStep reports whether buildctl's plain progress output shows step as
// CACHED. The plain format prints "#N [k/n] STEP" and later "#N CACHED".
func CachedStep(out, step string) bool {
	id := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "#") {
			continue
		}
		if strings.Contains(line, step) {
			id = f[0]
		}
		if id != "" && f[0] == id && f[1] == "CACHED" {
			return true
		}
	}
	return false
}
