package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/sinks/internal/webhook"
)

// Options configures a Sink. The command fills it from the sink's config.
type Options struct {
	// Name is the sink name, used in errors and logs.
	Name string
	// WebhookURL is the incoming-webhook URL. It is a secret: it is never logged or put in an
	// error, only its scheme and host.
	WebhookURL string
	// Text renders the message text of a change. Nil means DefaultText.
	Text func(*relay.Event) (string, error)
	// Blocks renders optional Block Kit blocks (any JSON-encodable value, usually a list).
	// Nil, or a nil result, sends no blocks.
	Blocks func(*relay.Event) (any, error)
	// Timeout bounds each request; zero means Client's timeout or 10s.
	Timeout time.Duration
	// InProcessRetries is the number of quick retries inside one Deliver call.
	InProcessRetries int
	// MinBackoff and MaxBackoff bound the waits between quick retries (zero: 200ms and 30s);
	// MaxBackoff also caps Slack's Retry-After.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives per-attempt logs, the URL redacted; nil discards them.
	Logger *slog.Logger
	// Client is an optional base client (tests, proxies); nil means a pooled transport.
	Client *http.Client
}

// Sink posts one Slack message per change. It is safe for concurrent use.
type Sink struct {
	name   string
	text   func(*relay.Event) (string, error)
	blocks func(*relay.Event) (any, error)
	client *webhook.Client
}

var _ relay.SinkCloser = (*Sink)(nil)

var (
	valJSON      = []string{"application/json"}
	valUserAgent = []string{"hubrelay"}
)

// New checks o and returns a Sink.
func New(o Options) (*Sink, error) {
	if o.Name == "" {
		return nil, errors.New("sink name is empty")
	}
	if o.WebhookURL == "" {
		return nil, fmt.Errorf("%s: webhook url is empty", o.Name)
	}
	c, err := webhook.New(webhook.Config{
		Name:       o.Name,
		URL:        o.WebhookURL,
		HidePath:   true,
		Timeout:    o.Timeout,
		Retries:    o.InProcessRetries,
		MinBackoff: o.MinBackoff,
		MaxBackoff: o.MaxBackoff,
		Logger:     o.Logger,
		Client:     o.Client,
		Detail:     errorCode,
	})
	if err != nil {
		return nil, err
	}
	text := o.Text
	if text == nil {
		text = DefaultText
	}
	return &Sink{name: o.Name, text: text, blocks: o.Blocks, client: c}, nil
}

// DefaultText is the message text when Options.Text is nil: the object, field, verb and entry
// id of the change.
func DefaultText(ev *relay.Event) (string, error) {
	s := ev.Object + " " + ev.Field
	if ev.Verb != "" {
		s += " " + ev.Verb
	}
	return s + " on " + ev.Entry.ID, nil
}

// Name returns the sink name.
func (s *Sink) Name() string { return s.name }

// Close closes the sink's idle keep-alive connections; Deliver fails afterwards without
// sending anything. It does not block, and a second Close does nothing.
func (s *Sink) Close(context.Context) error {
	s.client.Close()
	return nil
}

// message is the incoming-webhook payload.
type message struct {
	Text   string `json:"text"`
	Blocks any    `json:"blocks,omitempty"`
}

// Deliver renders ev and posts it, retried quickly as configured. It returns nil once Slack
// answered 2xx ("ok"). Slack does not deduplicate: a change delivered again is posted again.
// A change that cannot be rendered, and Slack's 4xx answers other than 429, are permanent
// (wrapping relay.ErrPermanent); other failures are non-permanent *relay.StatusError values;
// when ctx ends first the error wraps ctx.Err().
func (s *Sink) Deliver(ctx context.Context, ev *relay.Event) error {
	var m message
	var err error
	if m.Text, err = s.text(ev); err != nil {
		return fmt.Errorf("%s: render text of change %s: %w: %w", s.name, ev.ID, err, relay.ErrPermanent)
	}
	if s.blocks != nil {
		if m.Blocks, err = s.blocks(ev); err != nil {
			return fmt.Errorf("%s: render blocks of change %s: %w: %w", s.name, ev.ID, err, relay.ErrPermanent)
		}
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&m); err != nil {
		return fmt.Errorf("%s: encode message of change %s: %w: %w", s.name, ev.ID, err, relay.ErrPermanent)
	}
	h := http.Header{"Content-Type": valJSON, "User-Agent": valUserAgent}
	return s.client.Do(ctx, h, bytes.TrimSuffix(body.Bytes(), []byte("\n")))
}

// errorCode returns Slack's error code from the start of a failed response body
// ("invalid_payload", "channel_not_found"…), or "" when the body is not one.
func errorCode(body []byte) string {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || len(body) > 64 {
		return ""
	}
	for _, c := range body {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return ""
		}
	}
	return string(body)
}
