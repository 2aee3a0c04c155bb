-- Alert groups are scoped to the receiver route's campaign prefix (which an
-- API key must be allowed): two tenants whose Alertmanagers send the same
-- group key no longer see, close or restart each other's periods. Periods
-- written before this have no scope and stay visible to every route.
ALTER TABLE alert_periods ADD COLUMN scope text;
CREATE INDEX alert_periods_scope_group ON alert_periods (scope, group_key, id DESC);
