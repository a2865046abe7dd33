package enforce

import (
	"context"
	"log/slog"
)

// audit writes the one structured line per decision that operators grep and
// ship: everything needed to explain it, and never credentials.
func (e *Engine) audit(ctx context.Context, d *Decision) {
	level := slog.LevelInfo
	msg := "image admitted"
	switch {
	case d.FailedOpen:
		level = slog.LevelError
		msg = "image admitted WITHOUT its checks: registry unavailable and the rule is fail_open"
	case d.Audited:
		level = slog.LevelWarn
		msg = "image would be denied (audit mode)"
	case d.Denied():
		level = slog.LevelWarn
		msg = "image denied"
	}
	attrs := []slog.Attr{
		slog.String("event", "decision"),
		slog.String("op", string(d.Op)),
		slog.String("namespace", d.Namespace),
		slog.String("image", d.Image),
		slog.String("digest", d.Digest),
		slog.String("policy", d.Policy),
		slog.String("rule", d.Rule),
		slog.String("verdict", string(d.Verdict)),
		slog.Bool("audit_mode", d.Audited),
		slog.Bool("failed_open", d.FailedOpen),
		slog.String("reason", d.Reason),
		slog.Float64("latency_ms", float64(d.Latency.Microseconds())/1000),
	}
	if d.Category != "" {
		attrs = append(attrs, slog.String("category", string(d.Category)))
	}
	if d.VA != nil {
		attrs = append(attrs, slog.Any("va", *d.VA))
	}
	if d.Unscanned {
		// Searchable: the images that run without any scan report.
		attrs = append(attrs, slog.Bool("unscanned", true))
	}
	if d.PinnedRef != "" {
		attrs = append(attrs, slog.String("pinned", d.PinnedRef))
	}
	e.log.LogAttrs(ctx, level, msg, attrs...)
}
