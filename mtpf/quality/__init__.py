"""Recipe search for a release that beats its own base: recipes, resumable screen jobs, paired statistics."""
