"""backends/processes"""
