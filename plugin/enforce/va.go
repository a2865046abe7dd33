package enforce

import (
	"context"

	"github.com/pullguard/pullguard/plugin/policy"
)

// checkVA returns why the image fails vulnerability assessment.
func (e *Engine) checkVA(ctx context.Context, req Request, s *subject, rule policy.VA, d *Decision) *failure {
	// Until the scan-report source is wired in, a rule that asks for VA must
	// never admit.
	return &failure{SignatureValidationFailed, "the rule requires va (vulnerability assessment), which this pullguard build cannot check yet"}
}
