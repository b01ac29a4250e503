"""circuitlens"""
