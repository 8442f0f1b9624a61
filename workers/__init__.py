"""Background work: Dramatiq broker and jobs, and the adapters to the chain and Stripe."""
