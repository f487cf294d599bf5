package cachestore

import (
	"bytes"
	"testing"
)

func TestMeta(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	_, err := s.GetMeta("missing")
	wantErr(t, err, ErrNotFound)
	_, err = s.GetMeta("")
	wantErr(t, err, ErrInvalidName)

	tests := []struct {
		key string
		val []byte
	}{
		{"bucket/docker.io", []byte(`{"tokens":99.5}`)},
		{"empty", []byte{}},
		{"nil", nil},
		{"binary", []byte{0, 255, 0}},
	}
	for _, tt := range tests {
		val := bytes.Clone(tt.val)
		if err := s.PutMeta(tt.key, val); err != nil {
			t.Fatal(err)
		}
		if len(val) > 0 {
			val[0] ^= 0xff // the store must have copied it
		}
		got, err := s.GetMeta(tt.key)
		if err != nil || !bytes.Equal(got, tt.val) || got == nil {
			t.Errorf("GetMeta(%q) = %#v, %v; want %#v", tt.key, got, err, tt.val)
		}
		if len(got) > 0 {
			got[0] ^= 0xff // and hand out a copy
			if again, _ := s.GetMeta(tt.key); !bytes.Equal(again, tt.val) {
				t.Errorf("GetMeta(%q) handed out bbolt memory", tt.key)
			}
		}
	}
	if err := s.DeleteMeta("empty"); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetMeta("empty")
	wantErr(t, err, ErrNotFound)
}
