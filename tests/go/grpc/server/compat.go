package main

// cutPrefix is strings.CutPrefix (Go 1.20), here so the server builds with Go 1.17 too.
func cutPrefix(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || s[:len(prefix)] != prefix {
		return s, false
	}
	return s[len(prefix):], true
}
