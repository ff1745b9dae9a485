package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Field is one subscribed webhook field and the API version of its payloads.
type Field struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Subscription is one object an app receives webhooks for, as GET /{app-id}/subscriptions
// lists it.
type Subscription struct {
	Object      string  `json:"object"`
	CallbackURL string  `json:"callback_url"`
	Active      bool    `json:"active"`
	Fields      []Field `json:"fields"`
}

// Subscribe is what POST /{app-id}/subscriptions sets for one object.
type Subscribe struct {
	// Object is the webhook object: page, user, permissions, instagram,
	// whatsapp_business_account, ...
	Object string
	// CallbackURL is where Meta sends the verification GET and the notifications.
	CallbackURL string
	// Fields are the fields to receive. Meta adds them to the fields already subscribed for
	// the object; Unsubscribe removes fields.
	Fields []string
	// IncludeValues asks for the changed values in notifications (`changes`), not only the
	// names of the changed fields (`changed_fields`).
	IncludeValues bool
	// VerifyToken is echoed by Meta in the verification GET; a secret, never printed.
	VerifyToken string
}

// successAnswer is Graph's answer to a write: {"success": true}; Meta's documentation also
// shows {"success": "true"}.
type successAnswer struct {
	Success flexBool `json:"success"`
}

// flexBool is a JSON boolean that may also arrive as the string "true" or "false".
type flexBool bool

// UnmarshalJSON accepts true, false, "true" and "false".
func (b *flexBool) UnmarshalJSON(data []byte) error {
	switch string(data) {
	case "true", `"true"`:
		*b = true
	case "false", `"false"`, "null":
		*b = false
	default:
		return fmt.Errorf("success: want true or false, got %.20s", data)
	}
	return nil
}

// Subscribe subscribes the app to the object's webhooks, or updates its subscription. Meta
// verifies the callback first (a GET carrying the verify token, which must answer with the
// challenge) and refuses with code 2200 when that fails. tok must be an app access token.
func (c *Client) Subscribe(ctx context.Context, tok Token, appID string, s Subscribe) error {
	p := url.Values{}
	p.Set("object", s.Object)
	p.Set("callback_url", s.CallbackURL)
	p.Set("fields", strings.Join(s.Fields, ","))
	p.Set("include_values", strconv.FormatBool(s.IncludeValues))
	p.Set("verify_token", s.VerifyToken)
	return c.write(ctx, http.MethodPost, "/"+url.PathEscape(appID)+"/subscriptions", tok, p, []string{s.VerifyToken})
}

// Unsubscribe removes the app's subscription to object, or only the given fields of it.
func (c *Client) Unsubscribe(ctx context.Context, tok Token, appID, object string, fields []string) error {
	p := url.Values{}
	p.Set("object", object)
	if len(fields) > 0 {
		p.Set("fields", strings.Join(fields, ","))
	}
	return c.write(ctx, http.MethodDelete, "/"+url.PathEscape(appID)+"/subscriptions", tok, p, nil)
}

// Subscriptions lists the app's webhook subscriptions.
func (c *Client) Subscriptions(ctx context.Context, tok Token, appID string) ([]Subscription, error) {
	var out []Subscription
	err := list(ctx, c, "/"+url.PathEscape(appID)+"/subscriptions", tok, &out)
	return out, err
}

// SubscribedApp is one app subscribed to a WhatsApp Business Account, as GET
// /{waba-id}/subscribed_apps lists it.
type SubscribedApp struct {
	ID, Name, Link string
	// OverrideCallbackURI is the account's own callback, when it has one.
	OverrideCallbackURI string
}

// wireSubscribedApp is one element of GET /{waba-id}/subscribed_apps.
type wireSubscribedApp struct {
	Data struct {
		ID   string `json:"id"`
		Name string `json:"name"`
		Link string `json:"link"`
	} `json:"whatsapp_business_api_data"`
	OverrideCallbackURI string `json:"override_callback_uri"`
}

// SubscribeWABA subscribes the token's app to a WhatsApp Business Account, so that the
// account's webhooks reach the app. With overrideCallback set the account's webhooks go there
// instead of to the app's callback; Meta then verifies it with verifyToken first. tok must be
// allowed to manage the account (a system-user token with whatsapp_business_management).
func (c *Client) SubscribeWABA(ctx context.Context, tok Token, wabaID, overrideCallback, verifyToken string) error {
	p := url.Values{}
	if overrideCallback != "" {
		p.Set("override_callback_uri", overrideCallback)
		p.Set("verify_token", verifyToken)
	}
	return c.write(ctx, http.MethodPost, "/"+url.PathEscape(wabaID)+"/subscribed_apps", tok, p, []string{verifyToken})
}

// UnsubscribeWABA removes the token's app from a WhatsApp Business Account.
func (c *Client) UnsubscribeWABA(ctx context.Context, tok Token, wabaID string) error {
	return c.write(ctx, http.MethodDelete, "/"+url.PathEscape(wabaID)+"/subscribed_apps", tok, nil, nil)
}

// SubscribedApps lists the apps subscribed to a WhatsApp Business Account.
func (c *Client) SubscribedApps(ctx context.Context, tok Token, wabaID string) ([]SubscribedApp, error) {
	var wire []wireSubscribedApp
	if err := list(ctx, c, "/"+url.PathEscape(wabaID)+"/subscribed_apps", tok, &wire); err != nil {
		return nil, err
	}
	out := make([]SubscribedApp, len(wire))
	for i, w := range wire {
		out[i] = SubscribedApp{ID: w.Data.ID, Name: w.Data.Name, Link: w.Data.Link, OverrideCallbackURI: w.OverrideCallbackURI}
	}
	return out, nil
}

// write makes a call whose answer is {"success": true}.
func (c *Client) write(ctx context.Context, method, path string, tok Token, p url.Values, secrets []string) error {
	var ok successAnswer
	if err := c.call(ctx, method, path, tok, p, secrets, &ok); err != nil {
		return err
	}
	if !ok.Success {
		return &Error{Method: method, Path: "/" + c.version + path, Status: http.StatusOK, Attempts: 1,
			Cause: errors.New(`answer lacks "success": true`)}
	}
	return nil
}

// maxPages bounds how many pages a list follows.
const maxPages = 100

// page is one page of a Graph list.
type page[T any] struct {
	Data   []T `json:"data"`
	Paging struct {
		Cursors struct {
			After string `json:"after"`
		} `json:"cursors"`
		Next string `json:"next"`
	} `json:"paging"`
}

// list reads every page of a Graph list, following the "after" cursor while Graph says there
// is a next page. It never requests the "next" URL itself, which can carry the token.
func list[T any](ctx context.Context, c *Client, path string, tok Token, out *[]T) error {
	p := url.Values{}
	for range maxPages {
		var pg page[T]
		if err := c.call(ctx, http.MethodGet, path, tok, p, nil, &pg); err != nil {
			return err
		}
		*out = append(*out, pg.Data...)
		if pg.Paging.Next == "" || pg.Paging.Cursors.After == "" || len(pg.Data) == 0 {
			return nil
		}
		p.Set("after", pg.Paging.Cursors.After)
	}
	return nil
}
