"""The promotions service: promo code definitions, their usage ledger and the live usage gate."""
