// The policy the engine and middleware tests share.
export const POLICY = `
[[rule]]
name = "login"
match = "POST /auth/login"
quotas = ["2/min"]
key = "ip"

[[rule]]
name = "token"
match = "POST /oauth/token"
quotas = ["10/min"]
key = "header:x-client-id"
anonymous = "deny"

[[rule]]
name = "api"
match = "/api/**"
quotas = ["100/min"]
key = "ip"

[lists]
deny_api_keys = ["sk_revoked"]
`
