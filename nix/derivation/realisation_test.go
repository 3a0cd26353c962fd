package derivation

import (
	"testing"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// A realisation as Nix 2.8's nix-store --serve writes it in builtOutputs
// (docs/protocol.md §3.9.2).
const realisationJSONVector = `{"dependentRealisations":{},"id":"sha256:6b3c4ec8b0a2f8c4e0f6c1d2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6!out","outPath":"w6yn66wmg27g1fzfsawdc89bc438z0jq-rsch-ca2","signatures":[]}`

func TestRealisationJSON(t *testing.T) {
	r, err := ParseRealisationJSON(storepath.DefaultDir, []byte(realisationJSONVector))
	if err != nil {
		t.Fatal(err)
	}
	if r.ID.Output != "out" || r.OutPath != "/nix/store/w6yn66wmg27g1fzfsawdc89bc438z0jq-rsch-ca2" || r.ID.DrvHash.Algorithm() != hash.SHA256 {
		t.Fatalf("%+v", r)
	}
	b, err := r.MarshalJSON()
	if err != nil || string(b) != realisationJSONVector {
		t.Fatalf("%s %v, want %s", b, err, realisationJSONVector)
	}
	fp, err := r.Fingerprint()
	if err != nil || fp != `{"dependentRealisations":{},"id":"`+r.ID.String()+`","outPath":"w6yn66wmg27g1fzfsawdc89bc438z0jq-rsch-ca2"}` {
		t.Fatalf("fingerprint %s %v", fp, err)
	}
	for _, bad := range []string{`{}`, `{"id":"x","outPath":"y"}`, `{"id":"sha256:00!out"}`, `[`} {
		if _, err := ParseRealisationJSON(storepath.DefaultDir, []byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if _, err := ParseDrvOutput("sha256:6b3c4ec8b0a2f8c4e0f6c1d2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"); err == nil {
		t.Error("DrvOutput without '!' accepted")
	}
}

func TestDownstreamPlaceholder(t *testing.T) {
	p := DownstreamPlaceholder("/nix/store/jw8m77d5dyrsfidm52a5a88xixpjx52p-ca-self.drv", "out")
	want := "/" + hash.SumString(hash.SHA256, "nix-upstream-output:jw8m77d5dyrsfidm52a5a88xixpjx52p:ca-self").Encode(hash.Nix32, false)
	if p != want || len(p) != 53 {
		t.Fatalf("%s, want %s", p, want)
	}
	if DownstreamPlaceholder("/nix/store/jw8m77d5dyrsfidm52a5a88xixpjx52p-ca-self.drv", "dev") == p {
		t.Fatal("same placeholder for two outputs")
	}
}

// FuzzParseRealisation: the realisation decoders never panic, and what
// they accept re-encodes to something they read back the same.
func FuzzParseRealisation(f *testing.F) {
	f.Add([]byte(realisationJSONVector))
	f.Add([]byte(`{"id":"sha256:0000000000000000000000000000000000000000000000000000000000000000!dev","outPath":"w6yn66wmg27g1fzfsawdc89bc438z0jq-x","dependentRealisations":{"sha256:1111111111111111111111111111111111111111111111111111111111111111!out":"w6yn66wmg27g1fzfsawdc89bc438z0jq-y"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if id, err := ParseDrvOutput(string(data)); err == nil {
			back, err := ParseDrvOutput(id.String())
			if err != nil || back.String() != id.String() {
				t.Fatalf("DrvOutput %q -> %q -> %v", data, id, err)
			}
		}
		r, err := ParseRealisationJSON(storepath.DefaultDir, data)
		if err != nil {
			return
		}
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseRealisationJSON(storepath.DefaultDir, b)
		if err != nil {
			t.Fatalf("re-read %s: %v", b, err)
		}
		b2, _ := r2.MarshalJSON()
		if string(b) != string(b2) {
			t.Fatalf("%s != %s", b, b2)
		}
	})
}
