"""backends/threads"""
