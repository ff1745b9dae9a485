package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// consoleToken is the admin token of the browser test's relay.
const consoleToken = "console-test-token-7c1e"

// chromiumPath finds Debian's chromium. Outside CI a missing browser skips the test (loudly);
// in CI (CI=true, where .ci/run installs it) it fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found: .ci/run installs it with apt-get install -y chromium")
	}
	t.Skip("SKIPPED: browser test needs chromium (apt-get install -y chromium); CI runs it")
	return ""
}

func signBody(body []byte) string {
	m := hmac.New(sha256.New, []byte(testSecret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// TestConsole_Browser drives the console of a running relay in headless Chromium: the
// overview, signed notifications appearing in the live tail, a change's story, replaying a
// dead letter until it is delivered, and the route tester. It saves a screenshot of each page
// in $CONSOLE_SCREENSHOTS (default: a temporary directory) and logs the overview's load time.
func TestConsole_Browser(t *testing.T) {
	chrome := chromiumPath(t)
	dir := t.TempDir()
	shots := os.Getenv("CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	sink := newCollector(t)
	sink.setReject(true) // orders rejects: its deliveries become dead letters
	addr, adminAddr := freeAddr(t), freeAddr(t)
	cfgPath := writeConfig(t, dir, addr, sink.srv.URL)
	raw, _ := os.ReadFile(cfgPath)
	cfg := strings.Replace(string(raw), "apps:\n", fmt.Sprintf("admin:\n  listen: %s\n  console: true\n  token: %s\nlog:\n  payloads: true\napps:\n", adminAddr, consoleToken), 1)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelayHealth(t, dir, cfgPath, "http://"+adminAddr+"/healthz")
	base := "http://" + adminAddr + "/console/"

	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(chrome),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(browserProfile(t)),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancelC := chromedp.NewContext(actx)
	defer cancelC()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("operator:"+consoleToken))
	if err := chromedp.Run(ctx, network.Enable(), network.SetExtraHTTPHeaders(network.Headers{"Authorization": auth})); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	shot := func(name string) chromedp.Action {
		return chromedp.ActionFunc(func(ctx context.Context) error {
			var img []byte // JPEG: chromedp captures JPEG below quality 100
			if err := chromedp.FullScreenshot(&img, 80).Do(ctx); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".jpg"), img, 0o644)
		})
	}
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		if err := chromedp.Run(ctx, actions...); err != nil {
			var body string
			chromedp.Run(ctx, chromedp.Text("body", &body, chromedp.ByQuery))
			t.Fatalf("%s: %v\npage:\n%.2000s\nrelay logs:\n%.3000s", what, err, body, r.logs)
		}
	}
	// contains waits until the text of sel contains want.
	contains := func(sel, want string) chromedp.Action {
		return chromedp.Poll(fmt.Sprintf(`(document.querySelector(%q)||{}).textContent?.includes(%q)`, sel, want), nil,
			chromedp.WithPollingTimeout(90*time.Second))
	}

	// Traffic first, so every page has something to show: three new changes, one repeat,
	// one request with a bad signature.
	ids := []string{"console-1", "console-2", "console-3"}
	for _, id := range ids {
		body := waPayload(id)
		if st, b := post(t, r.url+"/webhooks", body, signBody(body)); st != 200 {
			t.Fatalf("post %s: %d %s", id, st, b)
		}
	}
	body := waPayload(ids[0])
	post(t, r.url+"/webhooks", body, signBody(body))
	post(t, r.url+"/webhooks", body, "sha256=00")
	changeID := "wa:msg:shop:wamid." + ids[0]

	// Overview, with its load time: cold (first visit, nothing cached) and warm (a reload).
	const timing = `(() => { const n = performance.getEntriesByType("navigation")[0];
		const data = performance.getEntriesByType("resource").find((r) => r.name.includes("/api/overview"));
		return [n.loadEventEnd - n.startTime, data ? data.responseEnd - n.startTime : -1,
			performance.getEntriesByType("resource").reduce((a, r) => a + r.transferSize, n.transferSize)] })()`
	var cold, warm []float64
	run("overview",
		chromedp.Navigate(base),
		contains("#sinks tbody", "orders"),
		contains("#apps", "accepted"),
		chromedp.Evaluate(timing, &cold),
		chromedp.Reload(),
		contains("#sinks tbody", "orders"),
		chromedp.Evaluate(timing, &warm),
	)
	run("overview dead letters", contains("#sinks tbody", "400"), shot("console-overview"))
	summary := fmt.Sprintf("console overview: load event %.0f ms cold (first data %.0f ms, %.0f bytes), %.0f ms warm (first data %.0f ms, %.0f bytes)",
		cold[0], cold[1], cold[2], warm[0], warm[1], warm[2])
	t.Log(summary)
	if f := os.Getenv("CONSOLE_LOADTIME"); f != "" {
		os.WriteFile(f, []byte(summary+"\n"), 0o644)
	}

	// Live tail: a change posted while the page is open appears.
	run("tail", chromedp.Navigate(base+"tail"), contains("#tail tbody", changeID), contains("#tail tbody", "duplicate"))
	late := waPayload("console-late")
	post(t, r.url+"/webhooks", late, signBody(late))
	run("tail live", contains("#tail tbody", "wamid.console-late"), contains("#tail tbody", `"body":"hi"`), shot("console-tail"))

	// The story of a change: accepted, its attempts, a dead letter for orders.
	run("story",
		chromedp.Navigate(base+"change?id="+changeID),
		contains("#story", "Where it is now"),
		contains("#story", "dead letter"),
		contains("#story", "archive: delivered"),
		shot("console-story"))

	// Dead letters: open one, replay it once orders accepts again, see it delivered.
	run("dead letters", chromedp.Navigate(base+"deadletters"), contains("#letters tbody", changeID), contains("#summary", "dead letter(s)"))
	// The letter of changeID's delivery to orders: every change's letter has the same second,
	// so the table's order among them is not the test's to assume.
	run("open letter",
		chromedp.Click(fmt.Sprintf(`//*[@id="letters"]//tbody/tr[td[contains(., %q)]]//button[contains(@class, "link")]`, changeID), chromedp.BySearch),
		contains("#detail", "Replay this letter"),
		contains("#detail", changeID),
		shot("console-deadletters"))
	sink.setReject(false)
	run("replay", chromedp.Click(`#detail button`, chromedp.ByQuery), contains("#summary", "replayed 1 of 1"))
	waitFor(t, "the replayed letter delivered to orders", func() bool {
		for _, id := range sink.ids() {
			if id == changeID {
				return true
			}
		}
		return false
	})
	run("story after replay", chromedp.Navigate(base+"change?id="+changeID), contains("#story", "orders: delivered"))

	// Pause orders from the sinks table: the table shows it paused, the relay keeps accepting
	// and the archive sink delivering while orders gets nothing; resume delivers it.
	sinkRow := func(state, button string) chromedp.Action {
		return chromedp.Poll(fmt.Sprintf(`[...document.querySelectorAll("#sinks tbody tr")].some((tr) =>
			tr.cells[0].textContent === "orders" && tr.cells[3].textContent === %q && tr.querySelector("button")?.textContent === %q)`, state, button),
			nil, chromedp.WithPollingTimeout(90*time.Second))
	}
	run("pause",
		chromedp.Navigate(base),
		sinkRow("no", "pause"),
		chromedp.Click(`//tr[td[1]="orders"]//button`, chromedp.BySearch),
		sinkRow("paused", "resume"),
		shot("console-paused"))
	st, b := apiDo(t, "GET", "http://"+adminAddr+"/api/sinks", "", "Bearer "+consoleToken, nil)
	if st != 200 || !strings.Contains(b, `"name":"orders","configured":true,"paused":true`) || !strings.Contains(b, `"by":"console: operator from 127.0.0.1:`) {
		t.Fatalf("after clicking pause the relay says: %d %s", st, b)
	}
	before := len(sink.ids())
	held := waPayload("console-held")
	if st, b := post(t, r.url+"/webhooks", held, signBody(held)); st != 200 {
		t.Fatalf("post while paused: %d %s", st, b)
	}
	run("paused sink's backlog", chromedp.Reload(), chromedp.Poll(`[...document.querySelectorAll("#sinks tbody tr")].some((tr) =>
		tr.cells[0].textContent === "orders" && tr.cells[1].textContent === "1")`, nil, chromedp.WithPollingTimeout(90*time.Second)))
	if n := len(sink.ids()); n != before {
		t.Fatalf("paused orders received %d change(s)", n-before)
	}
	run("resume",
		chromedp.Click(`//tr[td[1]="orders"]//button`, chromedp.BySearch),
		sinkRow("no", "pause"))
	waitLong(t, "the held change delivered after resume", func() bool { return len(sink.ids()) == before+1 })

	// Route tester: paste a payload, see the rules and sinks; a page change no rule matches.
	run("route",
		chromedp.Navigate(base+"route"),
		chromedp.SetValue(`textarea[name=payload]`, string(waPayload("route-1")), chromedp.ByQuery),
		chromedp.Click(`#route button`, chromedp.ByQuery),
		contains("#result", "rules whatsapp-inbound → sinks archive, orders"),
		shot("console-route"))

	// A narrow screen (a phone): the overview still fits.
	var scrollW, clientW int
	run("narrow",
		chromedp.EmulateViewport(390, 844),
		chromedp.Navigate(base),
		contains("#sinks tbody", "orders"),
		chromedp.Evaluate(`document.documentElement.scrollWidth`, &scrollW),
		chromedp.Evaluate(`document.documentElement.clientWidth`, &clientW),
		shot("console-narrow"))
	if scrollW > clientW+1 {
		t.Errorf("narrow screen: page is %dpx wide in a %dpx viewport", scrollW, clientW)
	}
	for _, s := range []string{testSecret, "verify-me-42", consoleToken} {
		var html string
		run("page source", chromedp.OuterHTML("html", &html, chromedp.ByQuery))
		if strings.Contains(html, s) {
			t.Errorf("page shows a secret")
		}
	}
}

// browserProfile is a fresh --user-data-dir for one Chromium. It is not t.TempDir: Chromium's
// helper processes may still be writing to it for a moment after the browser is killed, and
// t.TempDir fails the test when its directory cannot be removed. The removal is retried for a
// while and only logged if it does not succeed.
func browserProfile(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hubrelay-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var err error
		for i := 0; i < 50; i++ {
			if err = os.RemoveAll(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("chromium profile %s not removed: %v", dir, err)
	})
	return dir
}
