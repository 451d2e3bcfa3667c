-- Every tenant's counts for one day, for the operators' tenant list.
CREATE INDEX usage_by_day ON usage (day);
