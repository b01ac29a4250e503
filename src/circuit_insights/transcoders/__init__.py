"""transcoders"""
