package v1beta1

import (
	"fmt"
	"time"
)

// Duration is a duration as written, a Go duration string such as "90s", "5m" or "168h" (the
// form Kubernetes durations take too). Decoding checks the syntax, so a typo is reported where
// it was written (the TOML decoder adds the line); whether the value is in range is the
// model's business (policy.FromSpec). The written form is kept so that a policy round-trips
// through the API server unchanged.
//
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be a positive duration such as \"168h\" or \"30m\""
type Duration string

// Duration parses d.
func (d Duration) Duration() (time.Duration, error) {
	v, err := time.ParseDuration(string(d))
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (write e.g. \"30s\", \"5m\", \"168h\")", string(d))
	}
	return v, nil
}

// UnmarshalText implements encoding.TextUnmarshaler (the TOML and JSON decoders use it).
func (d *Duration) UnmarshalText(b []byte) error {
	if _, err := Duration(b).Duration(); err != nil {
		return err
	}
	*d = Duration(b)
	return nil
}

// UnmarshalYAML implements the YAML decoder's Unmarshaler.
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	return d.UnmarshalText([]byte(s))
}

// Date is an exemption expiry as written: a date "2027-01-31" (the exemption holds through the
// end of that day, UTC) or an RFC 3339 instant. In TOML it may also be a bare date or
// date-time, which decodes to the same text.
//
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:Pattern=`^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))?$`
type Date string

// Time parses d: a date means the last instant of that day in UTC, an RFC 3339 time is taken
// as is, and "" is the zero time (never expires).
func (d Date) Time() (time.Time, error) {
	s := string(d)
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

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Date) UnmarshalText(b []byte) error {
	if _, err := Date(b).Time(); err != nil {
		return err
	}
	*d = Date(b)
	return nil
}

// UnmarshalTOML accepts a quoted string or a native TOML date / date-time.
func (d *Date) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		return d.UnmarshalText([]byte(x))
	case time.Time:
		// The TOML decoder marks a bare date with this location name.
		if x.Location().String() == "date-local" {
			*d = Date(x.Format(time.DateOnly))
		} else {
			*d = Date(x.Format(time.RFC3339Nano))
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

func endOfDay(y int, m time.Month, d int) time.Time {
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)
}
