"""Catalog upkeep: the reference images' index, their perceptual hashes, and writes to the catalog."""
