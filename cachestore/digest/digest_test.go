package digest

import (
	"encoding/json"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestParse(t *testing.T) {
	t.Parallel()
	h256 := Sum(SHA256, []byte("x"))
	h512 := Sum(SHA512, []byte("x"))
	if len(h256.Hex) != 64 || len(h512.Hex) != 128 {
		t.Fatalf("Sum: %s %s", h256, h512)
	}
	for _, ok := range []v1.Hash{h256, h512} {
		if got, err := Parse(ok.String()); err != nil || got != ok {
			t.Errorf("Parse(%s) = %v, %v", ok, got, err)
		}
		if alg, found := AlgorithmOfHex(ok.Hex); !found || alg != ok.Algorithm {
			t.Errorf("AlgorithmOfHex(%s) = %q, %v", ok.Hex, alg, found)
		}
	}
	for _, bad := range []string{"", ":", "sha256", "sha256:", "sha512:" + h256.Hex, "sha256:" + h512.Hex,
		"sha256:" + strings.ToUpper(h256.Hex), "md5:d41d8cd98f00b204e9800998ecf8427e", "sha384:" + h512.Hex[:96],
		"SHA256:" + h256.Hex, "sha256:" + h256.Hex + "\n", "sha512:" + h512.Hex[:127] + "z"} {
		if d, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %v", bad, d)
		}
	}
	if New("md5") != nil || HexLen("sha1") != 0 {
		t.Error("an unsupported algorithm is known")
	}
	if d, n, err := FromReader(SHA512, strings.NewReader("x")); err != nil || d != h512 || n != 1 {
		t.Errorf("FromReader: %v %d %v", d, n, err)
	}
}

// Descriptor decodes what v1.Descriptor cannot (a sha512 digest) and
// encodes exactly as v1.Descriptor does.
func TestDescriptorJSON(t *testing.T) {
	t.Parallel()
	h512 := Sum(SHA512, []byte("layer"))
	raw := `{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":5,"digest":"` + h512.String() +
		`","annotations":{"a":"b"},"platform":{"architecture":"amd64","os":"linux"},"artifactType":"x/y"}`
	var v1d v1.Descriptor
	if err := json.Unmarshal([]byte(raw), &v1d); err == nil {
		t.Log("v1.Descriptor now decodes sha512; Descriptor may no longer be needed")
	}
	var d Descriptor
	if err := json.Unmarshal([]byte(raw), &d); err != nil {
		t.Fatal(err)
	}
	if d.Digest != h512 || d.Size != 5 || d.Annotations["a"] != "b" || d.Platform == nil || d.Platform.OS != "linux" || d.ArtifactType != "x/y" {
		t.Fatalf("decoded %+v", d.Descriptor)
	}
	enc, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(d.Descriptor)
	if string(enc) != string(want) {
		t.Errorf("encoding %s, v1 encodes %s", enc, want)
	}
	var list []Descriptor
	if err := json.Unmarshal([]byte(`[{"digest":"sha512:00"}]`), &list); err == nil {
		t.Error("a malformed sha512 digest decoded")
	}
}
