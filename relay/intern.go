package relay

// internTable holds names that recur in every notification (objects, fields, verbs), so
// decoding them allocates nothing.
var internTable = func() map[string]string {
	names := []string{
		// objects
		"page", "user", "instagram", "whatsapp_business_account", "permissions", "application",
		"certificate_transparency", "payment_subscriptions", "homepage",
		// fields
		"messages", "feed", "comments", "live_comments", "mentions", "story_insights", "leadgen",
		"photos", "email", "first_name", "last_name", "name", "picture", "messaging", "standby",
		"account_update", "account_alerts", "account_review_update", "business_capability_update",
		"message_template_status_update", "message_template_quality_update",
		"phone_number_name_update", "phone_number_quality_update", "template_category_update",
		"security", "flows", "smb_message_echoes", "history", "message_echoes",
		"connected", "bookmarked", "ratings", "conversations", "videos", "live_videos",
		// verbs and messaging kinds
		"add", "block", "edit", "edited", "delete", "follow", "hide", "mute", "remove",
		"unblock", "unhide", "update", "granted", "revoked",
		"message", "echo", "postback", "delivery", "read", "reaction", "referral", "optin",
		"account_linking", "pass_thread_control", "take_thread_control",
		"request_thread_control", "app_roles", "policy_enforcement", "message_edit",
		"messaging_feedback", "game_play", "unsend",
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = n
	}
	return m
}()

// intern returns b as a string, shared for common names.
func intern(b []byte) string {
	if s, ok := internTable[string(b)]; ok {
		return s
	}
	return string(b)
}
