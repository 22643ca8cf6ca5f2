"""Services: N identical machine instances kept at a desired count."""
