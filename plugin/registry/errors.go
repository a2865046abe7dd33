package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// The error classes callers branch on. Every error returned by this package
// that fits one of them wraps it, so errors.Is works through any wrapping.
var (
	// ErrUnavailable: the registry could not be asked (network error, timeout,
	// 5xx, 429). A decision that needed the registry must fail closed with
	// "RegistryUnavailable:" rather than "SignatureValidationFailed:".
	ErrUnavailable = errors.New("registry unavailable")
	// ErrNotFound: the registry answered that the manifest, blob or
	// repository does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry refused the credentials (or their absence).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrTooLarge: content exceeds a configured size bound; it is not read.
	ErrTooLarge = errors.New("content exceeds size limit")
	// ErrIntegrity: content does not match the digest or size it was
	// addressed by (a broken or malicious registry or mirror).
	ErrIntegrity = errors.New("content does not match its descriptor")
)

// classify maps the errors oras-go and net/http produce onto the package's
// error classes, keeping the original error in the chain for the message.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, known := range []error{ErrUnavailable, ErrNotFound, ErrUnauthorized, ErrTooLarge, ErrIntegrity} {
		if errors.Is(err, known) {
			return err
		}
	}
	var resp *errcode.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		case resp.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	switch {
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	case strings.Contains(err.Error(), ": mismatch "):
		// oras-go reports Content-Length, Content-Type and
		// Docker-Content-Digest disagreeing with the descriptor only as text.
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	case errors.Is(err, errdef.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, errdef.ErrSizeExceedsLimit):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var netErr net.Error
	var urlErr *url.Error
	if errors.As(err, &netErr) || errors.As(err, &urlErr) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
