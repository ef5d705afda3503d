"""Routing: applies sharing rules to each alert and explains every decision."""
