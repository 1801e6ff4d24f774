"""The sales domain: models, the stage machine and its gates, and the services
that change pipeline data. Knows nothing about HTTP."""
