"""backends/aws_lambda"""
