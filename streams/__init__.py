"""Real-time two-way CRM <-> ERP sync by change-data-capture."""
