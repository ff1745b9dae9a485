package deadletter_test

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

var update = flag.Bool("update", false, "rewrite testdata/example.json from exampleLetter")

// exampleLetter is the letter of testdata/example.json and of the example in doc.go: a
// WhatsApp text message the orders sink first failed to take, then rejected.
func exampleLetter() *deadletter.Letter {
	at := func(s string) time.Time {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			panic(err)
		}
		return t
	}
	return &deadletter.Letter{
		Sink:     "orders",
		Seq:      42,
		ChangeID: "wa:msg:shop:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
		Rules:    []string{"whatsapp-inbound"},
		Reason:   `permanent: orders: POST http://127.0.0.1:9000/meta: status 400 {"error":"unknown product \"crème brûlée\""} after 1 attempt`,
		FirstAt:  at("2025-06-08T20:59:44.127Z"),
		DeadAt:   at("2025-06-08T21:00:16.402Z"),
		Attempts: []deadletter.Attempt{
			{At: at("2025-06-08T20:59:44.130Z"), Status: 503, Error: "orders: POST http://127.0.0.1:9000/meta: status 503 after 3 attempts"},
			{At: at("2025-06-08T20:59:46.188Z"), Error: "orders: POST http://127.0.0.1:9000/meta: after 1 attempt: context deadline exceeded"},
			{At: at("2025-06-08T21:00:16.395Z"), Status: 400, Error: `orders: POST http://127.0.0.1:9000/meta: status 400 {"error":"unknown product \"crème brûlée\""} after 1 attempt`},
		},
		Change: []byte(`{"id":"wa:msg:shop:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","app":"shop","object":"whatsapp_business_account","entry":{"id":"102290129340398"},"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color? Crème brûlée \ud83d\udc4d"}}]},"received_at":"2025-06-08T20:59:44.127Z","rules":["whatsapp-inbound"]}`),
	}
}

// TestExample_Golden checks that Write produces testdata/example.json byte for byte and that
// the file reads back as the same letter. Run with -update to regenerate the file.
func TestExample_Golden(t *testing.T) {
	golden := filepath.Join("testdata", "example.json")
	d := openDir(t)
	l := exampleLetter()
	if err := d.Write(l); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(d.Path(), l.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Write output differs from %s (run go test -update):\n got: %s\nwant: %s", golden, got, want)
	}

	// The golden file, copied in under its own name, reads back as the letter.
	d2 := openDir(t)
	if err := os.WriteFile(filepath.Join(d2.Path(), "orders-00000000000000000042.json"), want, 0o640); err != nil {
		t.Fatal(err)
	}
	back, err := d2.Get("orders-00000000000000000042")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, l) {
		t.Fatalf("golden file reads back as\n%+v\nwant\n%+v", back, l)
	}
}

// TestDoc_Example checks that the example file shown in doc.go is testdata/example.json, so
// the documented format cannot drift from the real one.
func TestDoc_Example(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var shown strings.Builder
	for line := range strings.Lines(string(doc)) {
		if code, ok := strings.CutPrefix(line, "//\t"); ok {
			shown.WriteString(code)
		}
	}
	want, err := os.ReadFile(filepath.Join("testdata", "example.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(shown.String(), string(want)) {
		t.Fatalf("doc.go does not show testdata/example.json as its example file; paste it in, indented by a tab:\n%s", want)
	}
}

// Example shows a dead letter's life: the delivery engine writes it, the CLI queues it for
// replay, and the running relay picks it up and acknowledges it.
func Example() {
	dir, err := os.MkdirTemp("", "deadletter-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The delivery engine gives up on a delivery.
	d, err := deadletter.Open(dir)
	if err != nil {
		log.Fatal(err)
	}
	err = d.Write(&deadletter.Letter{
		Sink:     "orders",
		Seq:      42,
		ChangeID: "wa:msg:shop:wamid.HBgL",
		Reason:   "giving up after 10 attempt(s): orders: POST https://orders.example/meta: status 503 after 1 attempt",
		FirstAt:  time.Date(2025, 6, 8, 20, 59, 44, 0, time.UTC),
		DeadAt:   time.Date(2025, 6, 9, 0, 12, 3, 0, time.UTC),
		Change:   []byte(`{"id":"wa:msg:shop:wamid.HBgL","object":"whatsapp_business_account","field":"messages","value":{}}`),
	})
	if err != nil {
		log.Fatal(err)
	}

	// hubrelay deadletter list / replay.
	letters, err := d.List(deadletter.Filter{Sink: "orders"})
	if err != nil {
		log.Fatal(err)
	}
	for _, l := range letters {
		fmt.Println(l.ID, l.Reason)
		if err := d.QueueReplay(l.ID); err != nil {
			log.Fatal(err)
		}
	}

	// The running relay polls replay/, commits a new delivery, then acknowledges.
	pending, err := d.Pending()
	if err != nil {
		log.Fatal(err)
	}
	for _, l := range pending {
		fmt.Printf("replay %s to %s: %s\n", l.ID, l.Sink, l.Change)
		if err := d.Ack(l.ID); err != nil {
			log.Fatal(err)
		}
	}
	n, _ := d.Count("")
	fmt.Println("left:", n)
	// Output:
	// orders-00000000000000000042 giving up after 10 attempt(s): orders: POST https://orders.example/meta: status 503 after 1 attempt
	// replay orders-00000000000000000042 to orders: {"id":"wa:msg:shop:wamid.HBgL","object":"whatsapp_business_account","field":"messages","value":{}}
	// left: 0
}
