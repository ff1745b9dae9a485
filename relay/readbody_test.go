package relay

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
)

// heldBody is a HeldBody, as front.ReadBodies hands it on.
type heldBody struct {
	bytes.Reader
	b []byte
}

func (*heldBody) Close() error        { return nil }
func (h *heldBody) HeldBytes() []byte { return h.b }

// TestReceiver_TakesBufferedBody: the Receiver uses the bytes ReadBodies read (a HeldBody) as
// they are.
func TestReceiver_TakesBufferedBody(t *testing.T) {
	body := []byte(`{"object":"page"}`)
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Body = &heldBody{Reader: *bytes.NewReader(body), b: body}
	got, err := readBody(new(bytes.Buffer), r, 5)
	if err == nil {
		t.Fatalf("a buffered body over max was taken: %q", got)
	}
	got, err = readBody(new(bytes.Buffer), r, 1<<20)
	if err != nil || &got[0] != &body[0] {
		t.Fatalf("readBody = %q, %v; want the same bytes, not a copy", got, err)
	}
}
