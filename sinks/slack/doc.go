// Package slack posts changes to a Slack incoming webhook, one message per change.
//
// The message is {"text": …, "blocks": …}: Options.Text renders the text of a change (the
// command compiles the sink's `text` expression into it) and Options.Blocks, when set, its
// Block Kit blocks. A change the text or blocks cannot be rendered for is a permanent failure:
// no retry can fix it.
//
// Slack answers 200 "ok" when it took the message. Its 4xx answers (400 invalid_payload,
// invalid_blocks, no_text…; 403 action_prohibited; 404 no_service, channel_not_found; 410
// channel_is_archived) are permanent: Deliver returns a *relay.StatusError wrapping
// relay.ErrPermanent, whose message includes Slack's error code. 429 (rate limited) is
// retried after Retry-After, at most Options.MaxBackoff; 5xx and connection errors are retried
// with backoff. What is still failing after the quick in-process retries is a non-permanent
// *relay.StatusError for the delivery engine to reschedule.
//
// The webhook URL is a secret: errors and logs show it as https://hooks.slack.com/… only.
package slack
