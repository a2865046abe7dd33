package policy

import (
	"fmt"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("168h", "30m").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler (used by the TOML decoder).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalYAML implements the YAML decoder's Unmarshaler.
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	return d.UnmarshalText([]byte(s))
}

func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (write e.g. \"30s\", \"168h\")", s)
	}
	return v, nil
}

// Date is an exemption expiry: a date "2027-01-31" (the exemption holds through the end of
// that day, UTC) or a full RFC 3339 time. In TOML it may also be a bare date or date-time.
type Date struct{ time.Time }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Date) UnmarshalText(b []byte) error {
	t, err := ParseDate(string(b))
	if err != nil {
		return err
	}
	d.Time = t
	return nil
}

// UnmarshalTOML accepts a quoted string or a native TOML date / date-time.
func (d *Date) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		return d.UnmarshalText([]byte(x))
	case time.Time:
		if x.Location().String() == "date-local" {
			d.Time = endOfDay(x.Year(), x.Month(), x.Day())
		} else {
			d.Time = x
		}
		return nil
	}
	return fmt.Errorf("invalid date %v: want \"2006-01-02\" or an RFC 3339 time", v)
}

// UnmarshalYAML implements the YAML decoder's Unmarshaler.
func (d *Date) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	return d.UnmarshalText([]byte(s))
}

// ParseDate parses an expiry: "2006-01-02" means the last instant of that day in UTC; an RFC
// 3339 time is taken as is; "" is the zero time (never expires).
func ParseDate(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return endOfDay(t.Year(), t.Month(), t.Day()), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("invalid date %q: want \"2006-01-02\" or an RFC 3339 time", s)
}

func endOfDay(y int, m time.Month, d int) time.Time {
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)
}
